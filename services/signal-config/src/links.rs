//! `/j/<room>`: the share link that survives chat apps. Link-preview bots get an empty 204
//! (no room name in a preview, nothing cached); people get a 302 to `<origin>/<query>#<room>`,
//! so the room rides in the fragment and never reaches a web server log again.

use crate::SignalConfigState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// User-agent fragments of link-preview bots and crawlers (lowercase).
const BOTS: &[&str] = &[
    "whatsapp",
    "facebookexternalhit",
    "facebot",
    "twitterbot",
    "slackbot",
    "slack-imgproxy",
    "linkedinbot",
    "discordbot",
    "telegrambot",
    "skypeuripreview",
    "microsoftpreview",
    "applebot",
    "googlebot",
    "google-inspectiontool",
    "bingbot",
    "yandex",
    "baiduspider",
    "duckduckbot",
    "redditbot",
    "pinterest",
    "embedly",
    "vkshare",
    "viber",
    "line-poker",
    "mastodon",
    "bluesky",
    "cardyb",
    "iframely",
    "gptbot",
    "chatgpt-user",
    "oai-searchbot",
    "claudebot",
    "claude-web",
    "anthropic-ai",
    "perplexitybot",
    "ccbot",
    "bytespider",
    "amazonbot",
    "meta-externalagent",
];

/// Whether a user agent is a link-preview bot or crawler.
pub fn is_bot(user_agent: &str) -> bool {
    let ua = user_agent.to_ascii_lowercase();
    BOTS.iter().any(|b| ua.contains(b))
}

/// JavaScript's `encodeURIComponent`.
pub fn encode_uri_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The origin links are read and written against.
fn origin_for(state: &SignalConfigState, headers: &HeaderMap) -> Option<String> {
    if let Some(o) = &state.config.link_origin {
        return Some(o.clone());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    (!host.is_empty()).then(|| format!("https://{host}"))
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct RoomQuery {
    link: Option<String>,
}

fn json(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /api/room?link=<url or code>` → `{room, signalingId, gate}`. Content-blind: the link
/// is decoded and forgotten; nothing is stored or logged.
pub(crate) async fn room(
    State(state): State<SignalConfigState>,
    Query(q): Query<RoomQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(link) = q.link else {
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"missing link"}"#.into(),
        );
    };
    let Some(origin) = origin_for(&state, &headers) else {
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"missing Host"}"#.into(),
        );
    };
    match kibitz_proto::link::parse_room_target(&link, &origin) {
        Ok(target) => match serde_json::to_string(&target) {
            Ok(body) => json(StatusCode::OK, body),
            Err(_) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"error":"internal"}"#.into(),
            ),
        },
        Err(e) => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": e.to_string() }).to_string(),
        ),
    }
}

pub(crate) async fn join(
    State(state): State<SignalConfigState>,
    Path(room): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if is_bot(ua) {
        let mut r = StatusCode::NO_CONTENT.into_response();
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store, max-age=0"),
        );
        return r;
    }
    let Some(origin) = origin_for(&state, &headers) else {
        return (StatusCode::BAD_REQUEST, "missing Host").into_response();
    };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let target = format!("{origin}/{query}#{}", encode_uri_component(&room));
    match HeaderValue::from_str(&target) {
        Ok(loc) => {
            let mut r = StatusCode::FOUND.into_response();
            r.headers_mut().insert(header::LOCATION, loc);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(_) => (StatusCode::BAD_REQUEST, "bad link").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_javascript() {
        assert_eq!(
            encode_uri_component("my room/é?#&"),
            "my%20room%2F%C3%A9%3F%23%26"
        );
        assert_eq!(encode_uri_component("a-b_c.d!~*'()"), "a-b_c.d!~*'()");
    }

    #[test]
    fn bots_and_people() {
        assert!(is_bot("WhatsApp/2.23.20.0"));
        assert!(is_bot(
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"
        ));
        assert!(is_bot(
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; ClaudeBot/1.0)"
        ));
        assert!(!is_bot(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36"
        ));
    }
}
