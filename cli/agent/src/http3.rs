//! HTTP/3 on the agent's QUIC endpoint, so that tools other than edgectl can read a node: a
//! connection whose handshake settles on ALPN `h3` is served here, one on edgectl's own
//! protocol as before (see `server`). The same mutual TLS lets it in, and, as for edgectl's
//! requests, only the controller's certificate gets answers:
//!
//! - `GET /facts`: the node's facts ([`crate::facts::Facts`], what edgectl's `facts` request
//!   returns), as JSON;
//! - `GET /checks`: the checks the node makes of itself ([`crate::checks::LocalChecks`]), JSON;
//! - any other path: 404; another method on those paths: 405 (with `allow: GET`); another
//!   certificate of the cluster (a node's): 403.
//!
//! Every answer, errors too, is `content-type: application/json` (`{"error": "..."}` for
//! those); a request's query string and body are ignored.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};

use crate::{checks, facts};

/// The application protocol name of HTTP/3 (RFC 9114).
pub const ALPN: &[u8] = b"h3";

/// Largest header section the agent takes (requests here have no use for more).
const MAX_FIELD_SECTION: u64 = 16 << 10;

/// Serves HTTP/3 requests on `conn` until the client closes it; `controller`: its certificate
/// is the controller's.
pub async fn serve(conn: quinn::Connection, controller: bool) {
    let mut h3c = match h3::server::builder()
        .max_field_section_size(MAX_FIELD_SECTION)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgectl agent: HTTP/3 connection failed: {e}");
            return;
        }
    };
    // Ends with an error too when the client closes the connection, as clients do.
    while let Ok(Some(resolver)) = h3c.accept().await {
        tokio::spawn(async move {
            let Ok((req, mut stream)) = resolver.resolve_request().await else {
                return;
            };
            let (status, body) = answer(&req, controller).await;
            let mut resp = Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, body.len());
            if status == StatusCode::METHOD_NOT_ALLOWED {
                resp = resp.header(header::ALLOW, "GET");
            }
            let Ok(resp) = resp.body(()) else { return };
            if stream.send_response(resp).await.is_ok()
                && stream.send_data(Bytes::from(body)).await.is_ok()
            {
                let _ = stream.finish().await;
            }
        });
    }
}

fn error(status: StatusCode, message: &str) -> (StatusCode, Vec<u8>) {
    let body = serde_json::json!({ "error": message });
    (status, serde_json::to_vec(&body).unwrap_or_default())
}

fn json<T: serde::Serialize>(v: Result<T, String>) -> (StatusCode, Vec<u8>) {
    match v.and_then(|v| serde_json::to_vec(&v).map_err(|e| e.to_string())) {
        Ok(b) => (StatusCode::OK, b),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())
}

/// The status and JSON body that answer `req` from a client that is the controller or not.
pub async fn answer<B>(req: &Request<B>, controller: bool) -> (StatusCode, Vec<u8>) {
    if !controller {
        return error(
            StatusCode::FORBIDDEN,
            "only the controller's certificate may read this node",
        );
    }
    let path = req.uri().path();
    if !matches!(path, "/facts" | "/checks") {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no {path} here: GET /facts or /checks"),
        );
    }
    if req.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} answers GET only"),
        );
    }
    match path {
        "/facts" => json(blocking(facts::gather).await),
        _ => json(blocking(checks::run).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    /// Refusals answer at once, without gathering anything.
    #[tokio::test]
    async fn refusals() {
        let status = |r: Request<()>, ctrl| async move { answer(&r, ctrl).await.0 };
        let base = "https://n1.node.edgectl:7443";
        assert_eq!(
            status(req(Method::GET, &format!("{base}/facts")), false).await,
            StatusCode::FORBIDDEN
        );
        for p in ["/", "/facts/", "/fact", "/checks/x", "/Facts"] {
            let (s, body) = answer(&req(Method::GET, &format!("{base}{p}")), true).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{p}");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(v["error"].as_str().unwrap().contains(p), "{v}");
        }
        for m in [Method::POST, Method::PUT, Method::DELETE, Method::HEAD] {
            assert_eq!(
                status(req(m.clone(), &format!("{base}/checks")), true).await,
                StatusCode::METHOD_NOT_ALLOWED,
                "{m}"
            );
        }
    }
}
