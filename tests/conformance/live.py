"""Real-client conformance for the Live API: google-genai's `client.aio.live.connect`, unchanged,
through the gateway's TLS listener (the SDK always speaks wss:// when it has an API key).

Usage: live.py GATEWAY_HTTPS_URL TOKEN   (SSL_CERT_FILE names the CA that signed the gateway's certificate)
A text session (two turns), an audio session (PCM in, audio out), a session on an ephemeral
token made through the gateway (`client.auth_tokens.create`), then a refused token.
Exits non-zero on the first failure.
"""
import asyncio
import datetime
import sys

from google import genai
from google.genai import errors, types

base = sys.argv[1].rstrip("/")
token = sys.argv[2]
checks = 0


def check(name, cond, detail=""):
    global checks
    if not cond:
        print(f"FAIL {name}: {detail}")
        sys.exit(1)
    checks += 1
    print(f"ok   {name}")


async def turn_text(session, text):
    await session.send_client_content(turns={"role": "user", "parts": [{"text": text}]}, turn_complete=True)
    out, usage = "", None
    async for msg in session.receive():
        if msg.text:
            out += msg.text
        if msg.usage_metadata:
            usage = msg.usage_metadata
        if msg.server_content and msg.server_content.turn_complete:
            break
    return out, usage


async def main():
    client = genai.Client(api_key=token, http_options=types.HttpOptions(base_url=base))
    config = {"response_modalities": ["TEXT"]}
    async with client.aio.live.connect(model="gemini-live-2.5-flash", config=config) as s:
        text, usage = await turn_text(s, "hello live")
        check("live text turn", text == "Echo: hello live", text)
        check("live usage_metadata", usage is not None and usage.prompt_token_count == 2, usage)
        text, _ = await turn_text(s, "second turn")
        check("live second turn", text == "Echo: second turn", text)

    pcm = bytes(range(256)) * 8
    async with client.aio.live.connect(model="gemini-live-2.5-flash", config={"response_modalities": ["AUDIO"]}) as s:
        await s.send_realtime_input(audio=types.Blob(data=pcm, mime_type="audio/pcm;rate=16000"))
        await s.send_realtime_input(audio_stream_end=True)
        audio, done = b"", False
        async for msg in s.receive():
            if msg.data:
                audio += msg.data
            if msg.server_content and msg.server_content.turn_complete:
                done = True
                break
        check("live audio session", done and audio == pcm, len(audio))

    v1alpha = types.HttpOptions(base_url=base, api_version="v1alpha")
    maker = genai.Client(api_key=token, http_options=v1alpha)
    expires = datetime.datetime.now(tz=datetime.timezone.utc) + datetime.timedelta(minutes=5)
    made = maker.auth_tokens.create(config={"uses": 1, "expire_time": expires})
    check("ephemeral token made", (made.name or "").startswith("auth_tokens/"), made)
    eph = genai.Client(api_key=made.name, http_options=v1alpha)
    async with eph.aio.live.connect(model="gemini-live-2.5-flash", config=config) as s:
        text, _ = await turn_text(s, "ephemeral hello")
        check("live session on an ephemeral token", text == "Echo: ephemeral hello", text)

    bad = genai.Client(api_key="not-a-gateway-token", http_options=types.HttpOptions(base_url=base))
    try:
        async with bad.aio.live.connect(model="gemini-live-2.5-flash", config=config) as s:
            await turn_text(s, "should not be answered")
        check("live refused token", False, "a session opened")
    except errors.APIError as e:
        check("live refused token", e.code == 1008 and "UNAUTHENTICATED" in str(e), e)


asyncio.run(main())
print(f"{checks} Live checks passed")
