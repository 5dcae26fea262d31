//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the code. Every route is
//! registered through `routes()`, which takes each handler's `#[utoipa::path]` (method, path,
//! parameters, body, answers, scope) for both the router and the document, so a route
//! cannot exist undocumented. The errors any operation may answer (a token's, a body's, the
//! server's) are added to each by `add_common_errors`.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{
    alarms, dashboard, detectors, events, feedback, health, observations, schema, score, versions,
};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Vigil",
        description = "Anomaly detection beside the machine: score sensor readings, keep \
                       every answer in the log, manage models and alarms. Tokens are bearer \
                       tokens of three scopes: `admin` (every change; holds the other two), \
                       `read` and `score`. On a server listening on loopback only, `read` and \
                       `score` routes need no token unless one is configured. Every error is \
                       `{code, message}` with a stable `code` (see ErrorBody).",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(schema::ErrorBody)),
    tags(
        (name = "health", description = "Liveness, readiness, metrics"),
        (name = "detectors", description = "Detector definitions"),
        (name = "scoring", description = "Scoring readings"),
        (name = "models", description = "Model versions and signatures"),
        (name = "training", description = "Feedback and training on the box"),
        (name = "log", description = "What the log holds"),
        (name = "alarms", description = "Alarm records (ISA-18.2) and live events"),
        (name = "dashboard", description = "The page served to browsers")
    )
)]
struct ApiDoc;

/// The `bearer` security scheme the operations name.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)),
    security(())
)]
pub(crate) async fn openapi_json() -> impl axum::response::IntoResponse {
    let body = DOCUMENT.get_or_init(|| serialised(document()));
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.as_slice(),
    )
}

/// The document as served: set once, by the first router built (or the first request).
static DOCUMENT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

fn serialised(mut document: utoipa::openapi::OpenApi) -> Vec<u8> {
    add_common_errors(&mut document);
    serde_json::to_vec(&document).unwrap_or_default()
}

/// The router of every route, keeping the document that came with it for `/openapi.json`
/// (generated once).
pub(super) fn router() -> axum::Router<AppState> {
    let (router, document) = routes().split_for_parts();
    DOCUMENT.get_or_init(|| serialised(document));
    router
}

/// Every route, each with its documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(detectors::list))
        .routes(routes!(
            detectors::show,
            detectors::upsert,
            detectors::delete
        ))
        .routes(routes!(score::score))
        .routes(routes!(versions::list, versions::upload))
        .routes(routes!(versions::delete))
        .routes(routes!(versions::activate))
        .routes(routes!(versions::keys))
        .routes(routes!(feedback::feedback))
        .routes(routes!(feedback::train))
        .routes(routes!(feedback::training_runs))
        .routes(routes!(observations::observations))
        .routes(routes!(observations::streams))
        .routes(routes!(alarms::list))
        .routes(routes!(alarms::acknowledge))
        .routes(routes!(alarms::shelve))
        .routes(routes!(alarms::unshelve))
        .routes(routes!(events::events))
        .routes(routes!(dashboard::index))
        .routes(routes!(dashboard::script))
        .routes(routes!(dashboard::styles))
}

/// The document of `routes`, with the errors every operation may answer.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = routes().into_openapi();
    add_common_errors(&mut document);
    document
}

/// Adds to each operation the errors it may answer whatever it does: 401 and 403 when it
/// takes a token; 400, 408, 413 and 422 when it reads a body; 500; and 503 (`overloaded`:
/// the connection cap, `log_unavailable`). An answer the operation documents itself stays.
fn add_common_errors(document: &mut utoipa::openapi::OpenApi) {
    for item in document.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            for (status, codes) in common_errors(operation) {
                let response = ResponseBuilder::new()
                    .description(codes)
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                    )
                    .build();
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert(response.into());
            }
        }
    }
}

/// The statuses (with their codes) an operation may answer besides its own.
fn common_errors(operation: &Operation) -> Vec<(u16, &'static str)> {
    let takes_token =
        serde_json::to_string(&operation.security).is_ok_and(|s| s.contains("bearer"));
    let mut errors = vec![
        (500, "internal"),
        (503, "overloaded, log_unavailable (with Retry-After)"),
    ];
    if takes_token {
        errors.push((401, "unauthorized: a missing or wrong token"));
        errors.push((403, "forbidden: a token of another scope"));
    }
    if operation.request_body.is_some() {
        errors.push((400, "malformed_json, nesting_too_deep"));
        errors.push((408, "body_timeout"));
        errors.push((413, "body_too_large"));
        errors.push((
            422,
            "invalid_request: the body does not have the expected shape",
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json() -> serde_json::Value {
        serde_json::to_value(document()).unwrap()
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_route_and_its_errors() {
        let doc = json();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/v1/detectors",
            "/v1/detectors/{name}",
            "/v1/detectors/{name}/score",
            "/v1/detectors/{name}/versions",
            "/v1/detectors/{name}/versions/{version}",
            "/v1/detectors/{name}/activate",
            "/v1/keys",
            "/v1/detectors/{name}/feedback",
            "/v1/detectors/{name}/train",
            "/v1/detectors/{name}/training-runs",
            "/v1/detectors/{name}/observations",
            "/v1/detectors/{name}/streams",
            "/v1/alarms",
            "/v1/alarms/{id}/ack",
            "/v1/alarms/{id}/shelve",
            "/v1/alarms/{id}/unshelve",
            "/v1/events",
            "/",
            "/ui/app.js",
            "/ui/app.css",
        ] {
            assert!(paths.contains_key(path), "{path} is not documented");
        }
        assert_eq!(paths.len(), 24, "{:?}", paths.keys().collect::<Vec<_>>());
        // A changing route: its own answers, the token's and the body's.
        let put = &paths["/v1/detectors/{name}"]["put"];
        for status in [
            "200", "201", "400", "401", "403", "409", "413", "422", "500",
        ] {
            assert!(
                put["responses"][status].is_object(),
                "PUT detector {status}"
            );
        }
        assert_eq!(put["security"], serde_json::json!([{"bearer": []}]));
        // The liveness probe takes no token.
        assert!(paths["/healthz"]["get"]["responses"]["401"].is_null());
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    }
}
