"""Real-client conformance: google-genai and openai, unchanged, through the gateway.

Usage: conformance.py GATEWAY_URL [TOKEN]
Runs against `gemini-proxy demo` (embedded mock upstream), or, with TOKEN, against a gateway with
JWT auth on: the token then travels in each SDK's own place (x-goog-api-key for google-genai,
Authorization: Bearer for openai, ?key= for a plain HTTP call) and bad tokens must get 401.
Exits non-zero on the first failure.
"""
import json
import sys
import urllib.error
import urllib.request

from google import genai
from google.genai import types
import openai

base = sys.argv[1].rstrip("/")
token = sys.argv[2] if len(sys.argv) > 2 else "conformance-token"
checks = 0


def check(name, cond, detail=""):
    global checks
    if not cond:
        print(f"FAIL {name}: {detail}")
        sys.exit(1)
    checks += 1
    print(f"ok   {name}")


# Each SDK sends its own credential form: x-goog-api-key (genai), Bearer (openai).
client = genai.Client(api_key=token, http_options=types.HttpOptions(base_url=base))

r = client.models.generate_content(model="gemini-2.5-flash", contents="why is the sky blue?")
check("genai generate_content", r.text == "Echo: why is the sky blue?", r.text)
check("genai usage_metadata", r.usage_metadata.prompt_token_count > 0, r.usage_metadata)

parts = [c.text for c in client.models.generate_content_stream(model="gemini-2.5-flash", contents="stream this please")]
check("genai generate_content_stream", len(parts) == 3 and "".join(parts) == "Echo: stream this please", parts)

t = client.models.count_tokens(model="gemini-2.5-flash", contents="count me")
check("genai count_tokens", t.total_tokens == 2, t)

e = client.models.embed_content(model="gemini-embedding-001", contents=["hello", "world"],
                                config=types.EmbedContentConfig(output_dimensionality=4))
check("genai embed_content", len(e.embeddings) == 2 and len(e.embeddings[0].values) == 4, e)

models = list(client.models.list())
check("genai models.list", any(m.name == "models/gemini-2.5-flash" for m in models), [m.name for m in models])

m = client.models.get(model="gemini-2.5-pro")
check("genai models.get", m.name == "models/gemini-2.5-pro", m.name)

try:
    client.models.generate_content(model="mock-overloaded", contents="x")
    check("genai error surfaces", False, "no exception")
except genai.errors.ServerError as err:
    check("genai error surfaces", err.code == 503, err)

oa = openai.OpenAI(api_key=token, base_url=f"{base}/v1beta/openai/", max_retries=0)
c = oa.chat.completions.create(model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}])
check("openai chat", c.choices[0].message.content == "Echo: hi", c)
check("openai usage", c.usage.total_tokens > 0, c.usage)

chunks = list(oa.chat.completions.create(model="gemini-2.5-flash", stream=True,
                                         messages=[{"role": "user", "content": "stream me"}]))
text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
check("openai chat stream", text == "Echo: stream me", text)

emb = oa.embeddings.create(model="gemini-embedding-001", input="hello")
check("openai embeddings", len(emb.data) == 1, emb)

ids = [m.id for m in oa.models.list()]
check("openai models", "models/gemini-2.5-flash" in ids, ids)

if len(sys.argv) > 2:
    # ?key= (curl-style clients).
    req = urllib.request.Request(
        f"{base}/v1beta/models/gemini-2.5-flash:generateContent?key={token}",
        data=json.dumps({"contents": [{"parts": [{"text": "by query"}]}]}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req) as resp:
        body = json.load(resp)
    check("token in ?key=", body["candidates"][0]["content"]["parts"][0]["text"] == "Echo: by query", body)

    bad = genai.Client(api_key=token[:-2] + "xx", http_options=types.HttpOptions(base_url=base))
    try:
        bad.models.generate_content(model="gemini-2.5-flash", contents="x")
        check("genai bad token refused", False, "no exception")
    except genai.errors.ClientError as err:
        check("genai bad token refused", err.code == 401, err)
    bad_oa = openai.OpenAI(api_key="not-a-token", base_url=f"{base}/v1beta/openai/", max_retries=0)
    try:
        bad_oa.chat.completions.create(model="gemini-2.5-flash", messages=[{"role": "user", "content": "x"}])
        check("openai bad token refused", False, "no exception")
    except openai.AuthenticationError as err:
        check("openai bad token refused", err.status_code == 401, err)

print(f"{checks} passed, 0 failed")
