//! Just enough `Accept` negotiation to tell a browser navigating to `/` from an API client.

/// Whether `Accept` (all its header lines) names `text/html` and ranks it strictly above
/// `application/json`, each by its most specific matching range (RFC 9110 §12.5.1). No header,
/// `*/*` or `text/*` alone: not a browser page load, so the banner stays.
pub(crate) fn prefers_html<'a>(lines: impl Iterator<Item = &'a str>) -> bool {
    let ranges: Vec<(&str, &str, f32)> = lines
        .flat_map(|l| l.split(','))
        .filter_map(parse_range)
        .collect();
    let (named, html) = quality(&ranges, "text", "html");
    let (_, json) = quality(&ranges, "application", "json");
    named == EXACT && html > 0.0 && html > json
}

/// `type/subtype;q=…` into its parts; `None` for anything malformed.
fn parse_range(item: &str) -> Option<(&str, &str, f32)> {
    let mut parts = item.split(';');
    let (ty, sub) = parts.next()?.trim().split_once('/')?;
    let mut q = 1.0;
    for p in parts {
        if let Some((k, v)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("q")
        {
            q = v
                .trim()
                .parse::<f32>()
                .ok()
                .filter(|q| (0.0..=1.0).contains(q))?;
        }
    }
    Some((ty.trim(), sub.trim(), q))
}

const EXACT: u8 = 2;

/// The specificity and quality of the most specific range matching `ty/sub`; quality 0 when
/// none matches.
fn quality(ranges: &[(&str, &str, f32)], ty: &str, sub: &str) -> (u8, f32) {
    let specificity = |(t, s, _): &&(&str, &str, f32)| -> Option<u8> {
        match (*t, *s) {
            (t, s) if t.eq_ignore_ascii_case(ty) && s.eq_ignore_ascii_case(sub) => Some(EXACT),
            (t, "*") if t.eq_ignore_ascii_case(ty) => Some(1),
            ("*", "*") => Some(0),
            _ => None,
        }
    };
    ranges
        .iter()
        .filter_map(|r| specificity(&r).map(|s| (s, r.2)))
        .max_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
        .unwrap_or((0, 0.0))
}

#[cfg(test)]
mod tests {
    use super::prefers_html;

    fn html(accept: &[&str]) -> bool {
        prefers_html(accept.iter().copied())
    }

    #[test]
    fn browsers_prefer_html() {
        // Chromium, Firefox and Safari navigation requests.
        assert!(html(&[
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8"
        ]));
        assert!(html(&[
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ]));
        assert!(html(&["text/html"]));
        assert!(html(&["application/json;q=0.5", "text/html"]));
    }

    #[test]
    fn api_clients_do_not() {
        assert!(!html(&[]));
        assert!(!html(&["*/*"]));
        assert!(!html(&["text/*"]));
        assert!(!html(&["application/json"]));
        assert!(!html(&["application/json, text/plain, */*"]));
        assert!(!html(&["text/html, application/json"]));
        assert!(!html(&["text/html;q=0.5, application/json"]));
        assert!(!html(&["text/html;q=0", "*/*"]));
        assert!(!html(&["text/html;q=bogus"]));
        assert!(!html(&["garbage"]));
    }
}
