//! Native plugins: the example crate (examples/native-plugin), built by `cargo test` as a cdylib
//! (it is a dev-dependency of this crate), loaded through the sdk's FFI mirror; a library built
//! for another sdk version is refused with a clear error.

use std::path::PathBuf;

use gemini_proxy_tests::*;

/// Keys in two projects: the plugin pins tenant `acme` to `proj-acme`.
const KEYS: &[(&str, &str, u32)] = &[
    ("key-a", "valid-a", 1),
    ("key-b", "valid-b", 1),
    ("key-c", "valid-c", 1),
];

/// `target/<profile>/deps/lib<name>.so`, next to this test binary.
fn cdylib(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let file = format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let path = deps.join(&file);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

fn projects(text: &mut String) {
    *text = text.replace(
        "{ id: key-c, key: valid-c, weight: 1 }",
        "{ id: key-c, key: valid-c, weight: 1, project: proj-acme }",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn example_plugin_routes_and_weighs() {
    let lib = cdylib("gemini_proxy_example_native");
    let stage = format!(
        "pipeline:\n  - native:\n      path: \"{}\"\n      headers: [x-tenant]\n      config: {{ prefer_key: key-b, deny_models: [gemini-1.0-pro], tenant_projects: {{ acme: proj-acme }}, rewrite_models: {{ gemini-2.5-pro: gemini-2.5-flash }} }}\n  - key_select\n",
        lib.display()
    );
    let h = Harness::start_with(KEYS, &stage, projects);
    for _ in 0..3 {
        let (s, b) = h
            .call(
                "POST",
                "/v1beta/models/gemini-2.5-flash:generateContent",
                CLIENT,
                Some(gen_body("hi")),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(h.last_key(), "valid-b", "weigh chose prefer_key");
    }
    // The tenant header pins the tenant's project: only key-c is in it.
    for _ in 0..2 {
        let resp = h
            .client
            .post(h.url("/v1beta/models/gemini-2.5-flash:generateContent"))
            .header(CLIENT.0, CLIENT.1)
            .header("x-tenant", "acme")
            .body(gen_body("hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(h.last_key(), "valid-c", "route pinned proj-acme");
    }
    let (s, b) = h
        .call(
            "POST",
            "/v1beta/models/gemini-1.0-pro:generateContent",
            CLIENT,
            Some(gen_body("hi")),
        )
        .await;
    assert_eq!(s, 410, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("retired"));
    assert_eq!(h.mock.requests().len(), 5);
    let (s, b) = h
        .call(
            "POST",
            "/v1beta/models/gemini-2.5-pro:generateContent",
            CLIENT,
            Some(gen_body("hi")),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let last = h.mock.requests().pop().unwrap();
    assert!(
        last.path.contains("/models/gemini-2.5-flash:"),
        "rewritten: {}",
        last.path
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn incompatible_and_foreign_libraries_are_refused() {
    let mock = MockGemini::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libfake.so");
    std::fs::write(&fake, b"not a library").unwrap();
    let future = cdylib("gemini_proxy_example_native_incompatible");
    let cases = [
        (
            future.clone(),
            vec![
                "9.0.0",
                "incompatible",
                "rebuild it against gemini-proxy-sdk",
            ],
        ),
        (
            fake.clone(),
            vec!["cannot load native plugin", "libfake.so"],
        ),
    ];
    for (path, wants) in cases {
        let text = config_yaml(
            &mock.base_url(),
            free_port(),
            free_port(),
            KEYS,
            &format!(
                "pipeline:\n  - native: {{ path: \"{}\" }}\n",
                path.display()
            ),
        );
        let err = gemini_proxy_core::runtime::Shared::new(
            &loaded(&text),
            gemini_proxy_core::builtin_registry(),
        )
        .err()
        .expect("refused")
        .to_string();
        for want in wants {
            assert!(err.contains(want), "{}: {err}", path.display());
        }
    }
    // A plugin that refuses its config says so.
    let lib = cdylib("gemini_proxy_example_native");
    let text = config_yaml(
        &mock.base_url(),
        free_port(),
        free_port(),
        KEYS,
        &format!(
            "pipeline:\n  - native: {{ path: \"{}\", config: {{ typo: 1 }} }}\n",
            lib.display()
        ),
    );
    let err = gemini_proxy_core::runtime::Shared::new(
        &loaded(&text),
        gemini_proxy_core::builtin_registry(),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("refused its config") && err.contains("typo"),
        "{err}"
    );
}
