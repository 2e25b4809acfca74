//! Every malformed request gets a 4xx whose JSON error names the problem, and the server stays healthy.

use crate::common;

use common::{window, TestServer};
use serde_json::{json, Value};

struct Case {
    name: &'static str,
    body: Vec<u8>,
    content_type: &'static str,
    /// A `Content-Encoding` header, when the case sends one.
    content_encoding: Option<&'static str>,
    status: u16,
    code: &'static str,
    /// A fragment the error message must contain (it names the field or series at fault).
    mentions: &'static str,
}

fn case(
    name: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
    mentions: &'static str,
) -> Case {
    Case {
        name,
        body: body.into(),
        content_type: "application/json",
        content_encoding: None,
        status,
        code,
        mentions,
    }
}

fn json_case(name: &'static str, body: Value, code: &'static str, mentions: &'static str) -> Case {
    case(name, body.to_string(), 400, code, mentions)
}

/// A valid window with one entry replaced by raw JSON text.
fn window_with(position: usize, raw: &str) -> String {
    let mut values: Vec<String> = window(0.0).iter().map(|v| v.to_string()).collect();
    values[position] = raw.to_string();
    format!(r#"{{"series":[{{"values":[{}]}}]}}"#, values.join(","))
}

fn cases() -> Vec<Case> {
    let ok = window(0.0);
    vec![
        case("empty body", "", 400, "empty_request", "body is empty"),
        case(
            "whitespace body",
            "  \n ",
            400,
            "empty_request",
            "body is empty",
        ),
        case("not json", "hello", 400, "invalid_json", "not valid JSON"),
        json_case(
            "one series id twice",
            json!({"series": [{"id": "a", "values": ok}, {"id": "b", "values": ok}, {"id": "a", "values": ok}]}),
            "invalid_request",
            "series[2].id `a` repeats series[0].id",
        ),
        case(
            "truncated json",
            r#"{"series":["#,
            400,
            "invalid_json",
            "not valid JSON",
        ),
        case(
            "invalid utf-8",
            vec![b'{', 0xff, 0xfe, b'}'],
            400,
            "invalid_json",
            "not valid JSON",
        ),
        // The body is streamed: the first bracket is already the wrong kind, so nothing deeper
        // is read (no recursion to exhaust).
        case(
            "deeply nested garbage",
            "[".repeat(10_000),
            400,
            "invalid_request",
            "must be a JSON object with a `series` array, got an array",
        ),
        case(
            "deeply nested values",
            format!(r#"{{"series":[{{"values":[{}"#, "[".repeat(10_000)),
            400,
            "wrong_feature_count",
            "series[0].values[0] must be a number",
        ),
        json_case(
            "array at top level",
            json!([1, 2]),
            "invalid_request",
            "JSON object",
        ),
        json_case(
            "string at top level",
            json!("series"),
            "invalid_request",
            "got a string",
        ),
        json_case(
            "null at top level",
            Value::Null,
            "invalid_request",
            "got null",
        ),
        json_case(
            "missing series",
            json!({}),
            "invalid_request",
            "missing field `series`",
        ),
        json_case(
            "series is an object",
            json!({"series": {}}),
            "invalid_request",
            "`series` must be an array",
        ),
        json_case(
            "series is empty",
            json!({"series": []}),
            "empty_request",
            "`series` is empty",
        ),
        json_case(
            "too many series",
            json!({"series": vec![json!({"values": ok}); 257]}),
            "too_many_series",
            "at most 256",
        ),
        json_case(
            "series entry is a number",
            json!({"series": [3]}),
            "invalid_request",
            "series[0] must be an object",
        ),
        json_case(
            "series entry without values",
            json!({"series": [{"id": "a"}]}),
            "invalid_request",
            "series[0] is missing `values`",
        ),
        json_case(
            "values is a string",
            json!({"series": [{"values": "1,2,3"}]}),
            "invalid_request",
            "series[0].values must be an array",
        ),
        json_case(
            "window too short",
            json!({"series": [{"values": vec![1.0; 10]}]}),
            "wrong_window_length",
            "series[0].values has 10 entries",
        ),
        json_case(
            "window one too short",
            json!({"series": [{"values": vec![1.0; 167]}]}),
            "wrong_window_length",
            "at least 168",
        ),
        json_case(
            "history longer than 8 windows",
            json!({"series": [{"values": vec![1.0; 8 * 168 + 1]}]}),
            "wrong_window_length",
            "at most 1344",
        ),
        json_case(
            "window empty",
            json!({"series": [{"values": []}]}),
            "wrong_window_length",
            "has 0 entries",
        ),
        json_case(
            "second series has the wrong length",
            json!({"series": [{"values": ok}, {"values": [1.0, 2.0]}]}),
            "wrong_window_length",
            "series[1].values has 2 entries",
        ),
        case(
            "NaN literal",
            window_with(5, "NaN"),
            400,
            "invalid_json",
            "NaN and Infinity are not JSON numbers",
        ),
        case(
            "Infinity literal",
            window_with(5, "-Infinity"),
            400,
            "invalid_json",
            "NaN and Infinity are not JSON numbers",
        ),
        case(
            "number out of f64 range",
            window_with(7, "1e400"),
            400,
            "invalid_json",
            "not valid JSON",
        ),
        case(
            "NaN as a string",
            window_with(5, r#""NaN""#),
            400,
            "non_finite_value",
            "series[0].values[5]",
        ),
        case(
            "Infinity as a string",
            window_with(9, r#""Infinity""#),
            400,
            "non_finite_value",
            "series[0].values[9]",
        ),
        case(
            "null value (a gap)",
            window_with(3, "null"),
            400,
            "non_finite_value",
            "series[0].values[3] is null",
        ),
        case(
            "string value",
            window_with(4, r#""12.5C""#),
            400,
            "invalid_request",
            "series[0].values[4] must be a number, got a string",
        ),
        case(
            "boolean value",
            window_with(0, "true"),
            400,
            "invalid_request",
            "series[0].values[0] must be a number, got a boolean",
        ),
        case(
            "object value",
            window_with(1, r#"{"v":1}"#),
            400,
            "invalid_request",
            "got an object",
        ),
        case(
            "row for a univariate model",
            window_with(2, "[1.0]"),
            400,
            "wrong_feature_count",
            "one feature (OT)",
        ),
        case(
            "value too large for the network",
            window_with(167, "1e300"),
            400,
            "invalid_input",
            "too large",
        ),
        json_case(
            "unknown top-level field",
            json!({"series": [{"values": ok}], "horizon": 48}),
            "invalid_request",
            "unknown field `horizon`",
        ),
        json_case(
            "unknown series field",
            json!({"series": [{"values": ok, "freq": "1h"}]}),
            "invalid_request",
            "series[0] has unknown field `freq`",
        ),
        json_case(
            "numeric id",
            json!({"series": [{"id": 7, "values": ok}]}),
            "invalid_request",
            "series[0].id must be a string",
        ),
        json_case(
            "id too long",
            json!({"series": [{"id": "x".repeat(300), "values": ok}]}),
            "invalid_request",
            "series[0].id is longer than 256",
        ),
        json_case(
            "a 200 KB last_timestamp full of newlines",
            json!({"series": [{"values": ok, "last_timestamp": "forged\nlog line ".repeat(12_000)}]}),
            "invalid_timestamp",
            "`forged\\nlog line forged",
        ),
        json_case(
            "timestamp not RFC 3339",
            json!({"series": [{"values": ok, "last_timestamp": "yesterday"}]}),
            "invalid_timestamp",
            "series[0].last_timestamp `yesterday`",
        ),
        json_case(
            "forecast steps past year 9999",
            json!({"series": [{"values": ok, "last_timestamp": "9999-12-31T12:00:00Z"}]}),
            "invalid_timestamp",
            "would run past 9999-12-31T23:59:59Z",
        ),
        json_case(
            "timestamp as a number",
            json!({"series": [{"values": ok, "last_timestamp": 1519167600}]}),
            "invalid_timestamp",
            "must be an RFC 3339 string",
        ),
        case(
            "oversize body",
            vec![b' '; 3 * 1024 * 1024],
            413,
            "body_too_large",
            "byte limit",
        ),
        Case {
            content_type: "text/plain",
            ..case(
                "plain-text content type",
                json!({"series": [{"values": ok}]}).to_string(),
                415,
                "unsupported_media_type",
                "application/json",
            )
        },
        Case {
            content_encoding: Some("gzip"),
            ..case(
                "gzip-compressed body",
                // The gzip header bytes, then junk: the server must refuse the encoding before it
                // reads the body as JSON.
                vec![0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00],
                415,
                "unsupported_media_type",
                "send the body uncompressed",
            )
        },
    ]
}

#[tokio::test]
async fn every_bad_request_is_a_named_4xx_and_the_server_stays_healthy() {
    let server = TestServer::bundled().await;
    let client = reqwest::Client::new();
    let cases = cases();
    assert!(
        cases.len() >= 30,
        "the specification asks for at least 30 cases"
    );
    for case in cases {
        let mut request = client
            .post(server.url("/v1/forecast"))
            .header("content-type", case.content_type);
        if let Some(encoding) = case.content_encoding {
            request = request.header("content-encoding", encoding);
        }
        let response = request
            .body(case.body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: request failed: {e}", case.name));
        assert_eq!(response.status().as_u16(), case.status, "{}", case.name);
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{}: error body is not JSON: {e}", case.name));
        assert_eq!(body["error"]["code"], case.code, "{}: {body}", case.name);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(case.mentions),
            "{}: message {message:?} should mention {:?}",
            case.name,
            case.mentions
        );
        // Caller text is quoted as an excerpt: no answer (or log line) carries it whole.
        assert!(
            message.len() <= 1_000 && !message.contains('\n'),
            "{}: message of {} bytes: {:?}",
            case.name,
            message.len(),
            &message[..message.len().min(200)]
        );
        let health = client.get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200, "unhealthy after {}", case.name);
    }
    // Nothing was lost: a good request still gets a forecast.
    let response = client
        .post(server.url("/v1/forecast"))
        .json(&json!({"series": [{"values": window(0.0)}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}
