//! `/j/<room>`: the share link that survives chat apps. Link-preview bots get an empty 204
//! (no room name in a preview, nothing cached); people get a 302 to `<origin>/<query>#<room>`,
//! so the room rides in the fragment and never reaches a web server log again.

use crate::SignalConfigState;
use axum::extract::{Path, State};
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
    let origin = match &state.config.link_origin {
        Some(o) => o.clone(),
        None => match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
            Some(host) if !host.is_empty() => format!("https://{host}"),
            _ => return (StatusCode::BAD_REQUEST, "missing Host").into_response(),
        },
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
