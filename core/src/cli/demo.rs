//! The `demo` command's config and banner.

use crate::config::{self, LoadedConfig};

/// The config the demo runs with, pointed at the embedded mock.
pub fn demo_config(mock_base: &str, port: u16, admin_port: u16) -> LoadedConfig {
    let yaml = format!(
        r#"
server: {{ host: "127.0.0.1", port: {port} }}
gemini:
  base_url: "{mock_base}"
  api_keys:
    - {{ id: demo-a, key: demo-key-a, weight: 3 }}
    - {{ id: demo-b, key: demo-key-b, weight: 1 }}
metrics: {{ enabled: true, prometheus_port: {admin_port} }}
pool: {{ state_file: "" }}
pipeline:
  - request_log
  - key_select: {{ strategy: weighted_round_robin }}
"#
    );
    config::load_str(&yaml, "(demo)", &|_| None).expect("demo config is valid")
}

pub fn demo_banner(port: u16, admin_port: u16, mock: &str) -> String {
    format!(
        r#"
gemini-proxy demo
  proxy:        http://127.0.0.1:{port}
  admin:        http://127.0.0.1:{admin_port}  (/health /metrics /performance /errors /api/keys)
  console:      http://127.0.0.1:{admin_port}/ui/  (operator console; auth is off in the demo)
  mock Gemini:  {mock}  (embedded; keys demo-a x3, demo-b x1)

Try it:
  curl -s http://127.0.0.1:{port}/v1beta/models/gemini-2.5-flash:generateContent \
    -H 'x-goog-api-key: demo' -H 'content-type: application/json' \
    -d '{{"contents":[{{"parts":[{{"text":"why is the sky blue?"}}]}}]}}'

  curl -sN 'http://127.0.0.1:{port}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse' \
    -H 'x-goog-api-key: demo' -H 'content-type: application/json' -H 'x-mock-event-delay-ms: 300' \
    -d '{{"contents":[{{"parts":[{{"text":"stream please"}}]}}]}}'

  python3 - <<'PY'
from google import genai
from google.genai import types
client = genai.Client(api_key="demo", http_options=types.HttpOptions(base_url="http://127.0.0.1:{port}"))
print(client.models.generate_content(model="gemini-2.5-flash", contents="hello").text)
PY

  # A Live API session over a WebSocket (google-genai's live.connect needs the TLS listener):
  python3 - <<'PY'
import asyncio, json, websockets
async def main():
    url = "ws://127.0.0.1:{port}/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent?key=demo"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({{"setup": {{"model": "models/gemini-live-2.5-flash"}}}}))
        print(await ws.recv())
        turn = {{"role": "user", "parts": [{{"text": "hello live"}}]}}
        await ws.send(json.dumps({{"clientContent": {{"turns": [turn], "turnComplete": True}}}}))
        for _ in range(3): print(await ws.recv())
asyncio.run(main())
PY

  # Every call is a row in DuckDB (data/audit.duckdb); ask it in SQL:
  curl -s http://127.0.0.1:{admin_port}/api/sql -H 'content-type: application/json' \
    -d '{{"sql":"SELECT key_id, model, requests, p50_ms, p95_ms FROM latency_by_key_model"}}'

Ctrl+C stops it.
"#
    )
}
