//! `GET /openapi.json` from the real binary: OpenAPI 3.1, and the document and the router
//! agree — every documented operation is routed (never the router's 404 or 405), and a
//! method the document does not list on a path is 405. (Validity against the OpenAPI 3.1
//! schema and the property-based tester run in CI: `tests/api/schemathesis`.)

use serde_json::Value;
use system_tests::{TestServer, TOKEN};

/// The path with each `{parameter}` replaced by its example (or `x`).
fn concrete(path: &str, parameters: &[Value]) -> String {
    let mut out = path.to_owned();
    for parameter in parameters.iter().filter(|p| p["in"] == "path") {
        let name = parameter["name"].as_str().unwrap();
        let example = parameter["example"].as_str().unwrap_or("x");
        out = out.replace(&format!("{{{name}}}"), example);
    }
    out
}

#[test]
fn the_served_document_lists_exactly_what_the_router_routes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path());
    let answer = server.get("/openapi.json");
    assert_eq!(answer.status, 200);
    let doc = answer.body;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{:?}", paths.keys());
    let methods = ["get", "put", "post", "delete", "patch"];
    for (path, item) in paths {
        for method in methods {
            let documented = item.get(method).is_some();
            let parameters = item[method]["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let url = concrete(path, &parameters);
            let request = format!(
                "{} {url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n",
                method.to_uppercase()
            );
            let answer = server.raw(request.as_bytes());
            let code = answer.body["code"].as_str().unwrap_or("");
            if documented {
                assert!(
                    code != "not_found" && code != "method_not_allowed",
                    "{method} {url} is documented but not routed: {answer:?}"
                );
                let status = answer.status.to_string();
                assert!(
                    item[method]["responses"].get(&status).is_some(),
                    "{method} {url} answered {status}, which its document does not list"
                );
            } else {
                assert_eq!(
                    answer.status, 405,
                    "{method} {url} is routed but not documented"
                );
            }
        }
    }
    assert!(server.stop().success());
}
