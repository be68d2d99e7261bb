//! Tenants: every resource the gateway sees created (files, cached contents, batches, tuned
//! models, file search stores, corpora, upload sessions) belongs to the caller that created it,
//! a token's `tenant` claim or else its `sub`. Another caller gets 404 for it, as if it did not
//! exist, whether it names it in the path or in the body; a listing shows only the caller's
//! own. Admin tokens see everything. Without auth there is one tenant.
//!
//! A resource the gateway did not see created (made before, or with the key directly) has no
//! owner and is visible to admins only.

use gemini_proxy_sdk::{RequestContext, Role};

/// Collections whose members live in a project and belong to whoever created them.
pub const COLLECTIONS: &[&str] = &[
    "files",
    "cachedContents",
    "batches",
    "tunedModels",
    "fileSearchStores",
    "corpora",
];

/// `collection/id` for a resource name (`tunedModels/x/operations/y` → `tunedModels/x`), if it
/// names a member of a tenant-bound collection.
pub fn resource_key(name: &str) -> Option<String> {
    let mut parts = name.splitn(3, '/');
    let (collection, id) = (parts.next()?, parts.next()?);
    let id = id.split(':').next().unwrap_or("");
    (COLLECTIONS.contains(&collection)
        && !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    .then(|| format!("{collection}/{id}"))
}

/// The collection a `GET` of `path` lists (`/v1beta/files`, `/v1beta/openai/files` → `files`).
pub fn listed_collection(method: &http::Method, path: &str) -> Option<&'static str> {
    if method != http::Method::GET {
        return None;
    }
    let mut segs = path.trim_start_matches('/').split('/').skip(1).peekable();
    if segs.peek() == Some(&"openai") {
        segs.next();
    }
    let collection = segs.next()?;
    // `files/` lists as `files` does upstream: a trailing slash must not skip the filter.
    if segs.any(|s| !s.is_empty()) {
        return None;
    }
    COLLECTIONS.iter().copied().find(|c| *c == collection)
}

/// Most resource references one call may carry (more is refused when tenants are isolated).
pub const MAX_REFS: usize = 256;

/// One searcher per collection (`files/`, ...), built once.
static FINDERS: std::sync::LazyLock<Vec<memchr::memmem::Finder<'static>>> =
    std::sync::LazyLock::new(|| {
        COLLECTIONS
            .iter()
            .map(|c| memchr::memmem::Finder::new(format!("{c}/").as_bytes()).into_owned())
            .collect()
    });

/// Project-bound resources a request refers to, most specific first: the one in the path, an
/// upload session (`upload:ID`), then every `collection/id` in the body when `body` is given,
/// JSON escapes (`\/`, `\u0066`) read as Google's JSON parser reads them. At most
/// `MAX_REFS + 1` are returned, so a caller can tell there were too many.
pub fn resource_refs(path: &str, query: Option<&str>, body: Option<&[u8]>) -> Vec<String> {
    let mut out = Vec::new();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for w in segs.windows(2) {
        if let Some(k) = resource_key(&format!("{}/{}", w[0], w[1])) {
            push_ref(&mut out, k);
        }
    }
    for pair in query.unwrap_or("").split('&') {
        // Names and values as Google reads them: `upload%5Fid` is `upload_id`.
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let id = decode(value);
        if decode(name) == "upload_id" && !id.is_empty() {
            push_ref(&mut out, format!("upload:{id}"));
        }
    }
    if let Some(b) = body {
        let text = unescape_json(b);
        for (collection, finder) in COLLECTIONS.iter().zip(FINDERS.iter()) {
            let prefix = format!("{collection}/");
            for at in finder.find_iter(&text) {
                // `profiles/x` names no file.
                if at > 0 && text[at - 1].is_ascii_alphanumeric() {
                    continue;
                }
                let rest = &text[at + prefix.len()..];
                let len = rest
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
                    .count();
                if len > 0 {
                    let id = String::from_utf8_lossy(&rest[..len]);
                    push_ref(&mut out, format!("{prefix}{id}"));
                }
                if out.len() > MAX_REFS {
                    return out;
                }
            }
        }
    }
    out
}

fn push_ref(out: &mut Vec<String>, r: String) {
    if !out.contains(&r) {
        out.push(r);
    }
}

/// `body` with the JSON escapes that can spell a resource name (`\/`, `\u` of ASCII) resolved;
/// borrowed when it has none.
fn unescape_json(body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if memchr::memchr(b'\\', body).is_none() {
        return std::borrow::Cow::Borrowed(body);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c != b'\\' || i + 1 >= body.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let ascii = body
            .get(i + 2..i + 6)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .filter(|_| body[i + 1] == b'u' && body[i + 2..i + 4] == *b"00");
        match (body[i + 1], ascii) {
            (b'/', _) => {
                out.push(b'/');
                i += 2;
            }
            (b'u', Some(a)) if a.is_ascii() => {
                out.push(a);
                i += 6;
            }
            (next, _) => {
                // Any other escape (`\\`, `\"`, `\n`, non-ASCII `\u`) stays as it is.
                out.extend_from_slice(&[c, next]);
                i += 2;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Who owns what `cx`'s caller creates: `tenant:NAME` or `user:SUB`; `None` without a caller.
pub fn owner(cx: &RequestContext) -> Option<String> {
    let id = cx.identity.as_ref()?;
    let tenant = id
        .claims
        .get("tenant")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty());
    Some(match tenant {
        Some(t) => format!("tenant:{t}"),
        None => format!("user:{}", id.subject),
    })
}

/// Whether `cx`'s caller is held to its own resources (a non-admin caller, isolation on).
pub fn isolated(cx: &RequestContext, enabled: bool) -> bool {
    enabled && cx.identity.as_ref().is_some_and(|i| i.role != Role::Admin)
}

/// A listing with the members `may_see` refuses taken out of every top-level array; `None`
/// when the body is not a JSON object (it then passes as it is: an error, say).
pub fn filter_listing(body: &[u8], may_see: impl Fn(&str) -> bool) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    for (_, field) in obj.iter_mut() {
        if let Some(items) = field.as_array_mut() {
            items.retain(|item| member_key(item).is_some_and(|k| may_see(&k)));
        }
    }
    serde_json::to_vec(&v).ok()
}

/// The resource a listed or created item is: its Google `name`, or an OpenAI-style `id`
/// (`files/x`, or a bare id with `object: "file" | "batch"`).
pub fn member_key(item: &serde_json::Value) -> Option<String> {
    if let Some(k) = item
        .get("name")
        .and_then(|n| n.as_str())
        .and_then(resource_key)
    {
        return Some(k);
    }
    let id = item.get("id").and_then(|i| i.as_str())?;
    resource_key(id).or_else(|| {
        let collection = match item.get("object").and_then(|o| o.as_str())? {
            "file" => "files",
            "batch" => "batches",
            _ => return None,
        };
        resource_key(&format!("{collection}/{id}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_collections_and_listings() {
        assert_eq!(resource_key("files/abc").as_deref(), Some("files/abc"));
        assert_eq!(
            resource_key("tunedModels/t1/operations/o2").as_deref(),
            Some("tunedModels/t1")
        );
        assert_eq!(
            resource_key("files/abc:download").as_deref(),
            Some("files/abc")
        );
        assert_eq!(resource_key("models/gemini-2.5-flash"), None);
        assert_eq!(resource_key("files/"), None);
        assert_eq!(resource_key("files/a b"), None);
        let get = http::Method::GET;
        assert_eq!(listed_collection(&get, "/v1beta/files"), Some("files"));
        assert_eq!(listed_collection(&get, "/v1beta/files/x"), None);
        assert_eq!(listed_collection(&get, "/v1beta/files/"), Some("files"));
        assert_eq!(
            listed_collection(&get, "/v1beta/cachedContents/"),
            Some("cachedContents")
        );
        assert_eq!(listed_collection(&get, "/v1beta/files/x/"), None);
        assert_eq!(
            listed_collection(&http::Method::POST, "/v1beta/files"),
            None
        );
        assert_eq!(
            listed_collection(&get, "/v1beta/openai/files"),
            Some("files")
        );
        let oa = br#"{"data":[{"id":"files/a"},{"id":"b","object":"batch"},{"id":"c","object":"file"}]}"#;
        let out = filter_listing(oa, |k| k == "files/a" || k == "batches/b").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        let body =
            br#"{"files":[{"name":"files/a"},{"name":"files/b"},{"x":1}],"nextPageToken":"t"}"#;
        let out = filter_listing(body, |k| k == "files/a").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["files"].as_array().unwrap().len(), 1);
        assert_eq!(v["nextPageToken"], "t");
    }

    #[test]
    fn finds_every_reference_however_spelled() {
        assert_eq!(
            resource_refs("/v1beta/files/abc-1", None, None),
            vec!["files/abc-1"]
        );
        assert_eq!(
            resource_refs("/v1beta/batches/b7:cancel", None, None),
            vec!["batches/b7"]
        );
        assert!(resource_refs("/v1beta/files", None, None).is_empty());
        assert_eq!(
            resource_refs(
                "/upload/v1beta/files",
                Some("upload_id=u9&upload_protocol=resumable"),
                None
            ),
            vec!["upload:u9"]
        );
        // However the name or the value is escaped, and every one of several.
        for q in [
            "upload%5Fid=u9",
            "upload%5fid=u9",
            "%75pload_id=u9",
            "upload_id=%75%39",
        ] {
            assert_eq!(
                resource_refs("/upload/v1beta/files", Some(q), None),
                vec!["upload:u9"],
                "{q}"
            );
        }
        assert_eq!(
            resource_refs(
                "/upload/v1beta/files",
                Some("upload_id=a&upload%5Fid=b"),
                None
            ),
            vec!["upload:a", "upload:b"]
        );
        let body = br#"{"cachedContent":"cachedContents/cc1","contents":[{"parts":[{"fileData":{"fileUri":"https://generativelanguage.googleapis.com/v1beta/files/f2"}}]}]}"#;
        assert_eq!(
            resource_refs("/v1beta/models/m:generateContent", None, Some(body)),
            vec!["files/f2", "cachedContents/cc1"]
        );
        // JSON escapes spell the same names; a backslash escape of its own does not.
        let escaped = br#"{"a":"\u0066iles\/x1","b":"cachedContents\/c.2","c":"\\/files/","d":"tunedModels\u002ft"}"#;
        assert_eq!(
            resource_refs("/v1beta/models/m:generateContent", None, Some(escaped)),
            vec!["files/x1", "cachedContents/c.2", "tunedModels/t"]
        );
        // Words that end in a collection's name are no reference.
        let prose = br#"{"text":"profiles/x smallfiles/y"}"#;
        assert!(resource_refs("/v1beta/models/m:generateContent", None, Some(prose)).is_empty());
        // No cut-off before MAX_REFS: the last of many is still seen.
        let many: String = (0..MAX_REFS + 5).map(|i| format!("files/f{i} ")).collect();
        let refs = resource_refs("/v1beta/x", None, Some(many.as_bytes()));
        assert_eq!(refs.len(), MAX_REFS + 1);
    }
}
