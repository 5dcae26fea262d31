//! The dashboard's page and assets (`/`, `/ui/app.js`, `/ui/app.css`), embedded in the binary:
//! no build step, no CDN, nothing fetched from elsewhere (the box may be offline). They hold
//! no data — the page reads everything through the API with the browser's token — so they
//! are served without one. Revalidated by ETag (the content's blake3).

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../dashboard/index.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const APP_CSS: &str = include_str!("../dashboard/app.css");

/// Only the box itself: scripts, styles and connections to its own origin, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// An asset with its ETag, or 304 when the browser holds it already.
fn asset(
    request: &HeaderMap,
    content_type: &'static str,
    body: &'static str,
    etag: &'static OnceLock<String>,
) -> Response {
    let tag = etag.get_or_init(|| format!("\"{}\"", &blake3::hash(body.as_bytes()).to_hex()[..16]));
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(value) = HeaderValue::from_str(tag) {
        headers.insert(header::ETAG, value);
    }
    if content_type.starts_with("text/html") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

/// `GET /`: the dashboard.
#[utoipa::path(
    get,
    path = "/",
    tag = "dashboard",
    responses((status = 200, description = "The dashboard's page (HTML)", content_type = "text/html", body = String), (status = 304, description = "Not modified (If-None-Match)")),
    security(())
)]
pub(crate) async fn index(headers: HeaderMap) -> Response {
    static TAG: OnceLock<String> = OnceLock::new();
    asset(&headers, "text/html; charset=utf-8", INDEX, &TAG)
}

/// `GET /ui/app.js`: the dashboard's script.
#[utoipa::path(
    get,
    path = "/ui/app.js",
    tag = "dashboard",
    responses((status = 200, description = "The dashboard's script", content_type = "text/javascript", body = String), (status = 304, description = "Not modified (If-None-Match)")),
    security(())
)]
pub(crate) async fn script(headers: HeaderMap) -> Response {
    static TAG: OnceLock<String> = OnceLock::new();
    asset(&headers, "text/javascript; charset=utf-8", APP_JS, &TAG)
}

/// `GET /ui/app.css`: the dashboard's styles.
#[utoipa::path(
    get,
    path = "/ui/app.css",
    tag = "dashboard",
    responses((status = 200, description = "The dashboard's styles", content_type = "text/css", body = String), (status = 304, description = "Not modified (If-None-Match)")),
    security(())
)]
pub(crate) async fn styles(headers: HeaderMap) -> Response {
    static TAG: OnceLock<String> = OnceLock::new();
    asset(&headers, "text/css; charset=utf-8", APP_CSS, &TAG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_asset_is_answered_304_when_the_browser_has_it_and_the_page_carries_its_policy() {
        static TAG: OnceLock<String> = OnceLock::new();
        let first = asset(&HeaderMap::new(), "text/html; charset=utf-8", INDEX, &TAG);
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        assert!(first.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'"));
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag.clone());
        let second = asset(&again, "text/html; charset=utf-8", INDEX, &TAG);
        assert_eq!(second.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(second.headers()[header::ETAG], etag);
        let mut other = HeaderMap::new();
        other.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(
            asset(&other, "text/css", APP_CSS, &TAG).status(),
            StatusCode::OK
        );
    }

    #[test]
    fn the_page_loads_its_assets_from_the_box_and_nothing_inline() {
        assert!(INDEX.contains(r#"src="/ui/app.js""#));
        assert!(INDEX.contains(r#"href="/ui/app.css""#));
        assert!(
            !INDEX.contains("<script>"),
            "inline scripts break the policy"
        );
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"));
    }
}
