//! API Gateway's HTTP API in front of a function under cargo-lambda's emulator, for clients that
//! speak HTTP rather than Lambda events (tritonclient): each request becomes the payload format
//! 2.0 proxy event that API Gateway sends (body base64-encoded, as API Gateway does for a binary
//! body), invoked through the emulator's Invoke API, and the function's proxy response goes back
//! as the HTTP answer. The function, its router and the Runtime API are the real ones; this only
//! does API Gateway's conversion.

use base64::Engine;
use serde_json::json;

pub struct HttpApiBridge {
    /// `127.0.0.1:PORT`, where clients connect.
    pub address: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for HttpApiBridge {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl HttpApiBridge {
    /// In front of the function attached to the emulator listening on `emulator_port`.
    pub async fn start(emulator_port: u16) -> Self {
        let invoke = format!("http://127.0.0.1:{emulator_port}/2015-03-31/functions/_/invocations");
        let app = axum::Router::new().fallback(forward).with_state(invoke);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        HttpApiBridge { address, server }
    }
}

async fn forward(
    axum::extract::State(invoke): axum::extract::State<String>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let value = value.to_str().unwrap_or_default();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|v| *v = format!("{},{value}", v.as_str().unwrap()).into())
            .or_insert_with(|| value.into());
    }
    let path = parts.uri.path().to_owned();
    let event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": parts.uri.query().unwrap_or(""),
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012", "apiId": "bridge", "domainName": "127.0.0.1",
            "domainPrefix": "bridge", "requestId": format!("bridge-{}", std::process::id()),
            "routeKey": "$default", "stage": "$default",
            "time": "07/Dec/2026:00:00:00 +0000", "timeEpoch": 1796601600000u64,
            "http": {"method": parts.method.as_str(), "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "bridge"}
        },
        "body": base64::engine::general_purpose::STANDARD.encode(&body),
        "isBase64Encoded": true
    });
    let answer = super::post_json(&reqwest::Client::new(), &invoke, &event).await;
    let body = answer["body"].as_str().unwrap_or_default();
    let body = if answer["isBase64Encoded"] == true {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    } else {
        body.as_bytes().to_vec()
    };
    let status = answer["statusCode"].as_u64().unwrap_or(502) as u16;
    let mut response = axum::response::Response::builder().status(status);
    for (name, value) in answer["headers"].as_object().into_iter().flatten() {
        if name != "content-length" {
            response = response.header(name.as_str(), value.as_str().unwrap_or_default());
        }
    }
    response.body(axum::body::Body::from(body)).unwrap()
}
