//! Which HTTP status answers what, in plain Rust: the routes, and the SQLSTATE of a refused
//! delivery turned into the status Dialpad acts on. Dialpad never retries a 4xx, so a 4xx
//! is given only when a retry can never succeed; whatever the database cannot do *now* is a
//! 503, which Dialpad retries (docs/http.md, "Status codes").

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// POST /webhooks (None) or POST /webhooks/{source}.
    Deliver(Option<String>),
    Health,
    Metrics,
    /// A known path with a method it does not take: 405 with this Allow header.
    WrongMethod(&'static str),
    NotFound,
}

/// The route of `method` on `path` (without the query string).
pub(crate) fn route(method: &str, path: &str) -> Route {
    let (route, allow) = match path {
        "/webhooks" | "/webhooks/" => (Route::Deliver(None), "POST"),
        "/healthz" => (Route::Health, "GET, HEAD"),
        "/metrics" => (Route::Metrics, "GET, HEAD"),
        _ => match path.strip_prefix("/webhooks/") {
            // The name as Dialpad was given it: percent-decoded (`acme%3Aeu` is "acme:eu").
            Some(source) if !source.contains('/') => {
                match percent_encoding::percent_decode_str(source).decode_utf8() {
                    Ok(name) => (Route::Deliver(Some(name.into_owned())), "POST"),
                    // Not UTF-8 once decoded: no source can have that name.
                    Err(_) => return Route::NotFound,
                }
            }
            _ => return Route::NotFound,
        },
    };
    let allowed = match route {
        Route::Deliver(_) => method == "POST",
        _ => method == "GET" || method == "HEAD",
    };
    if allowed {
        route
    } else {
        Route::WrongMethod(allow)
    }
}

/// The status of a delivery dialpad.ingest_webhook refused with `sqlstate` (and, for 28000,
/// the reason in its DETAIL); None when the database cannot take it now (503).
pub(crate) fn refusal_status(sqlstate: &str, detail: Option<&str>) -> Option<u16> {
    match sqlstate {
        // A refusal to trust the delivery: which source, and why.
        "28000" => match detail {
            Some("unknown source") => Some(404),
            Some("disabled source") => Some(403),
            // A token whose nbf is a few seconds ahead of this server's clock becomes valid:
            // a retry (2, 4, 8 s later) may succeed.
            Some("not yet valid") => None,
            _ => Some(401),
        },
        // Every data exception (class 22): not JSON, not a well-formed token, an empty or
        // NULL body, a \u0000 escape, a number out of range, older than
        // dialpad.max_event_age, or no source named while several are configured: the same
        // body is refused again, however often it is sent.
        s if s.starts_with("22") => Some(400),
        "54000" => Some(413),
        // Nested deeper than the server's stack allows: the same body fails again.
        "54001" => Some(400),
        // Everything else — 55000 (library and SQL versions differ), 25006 (read-only),
        // 55P03 (lock timeout), 40P01 (deadlock), 42501 (the listener's role lacks a
        // privilege), 57xxx (shutting down), XX000 — may succeed later.
        _ => None,
    }
}

/// The SQLSTATE of an error code as PostgreSQL packs it (MAKE_SQLSTATE: six bits a character).
pub(crate) fn unpack_sqlstate(code: i32) -> String {
    (0..5).map(|i| char::from(((code >> (6 * i)) & 0x3f) as u8 + b'0')).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("POST", "/webhooks"), Route::Deliver(None));
        assert_eq!(route("POST", "/webhooks/"), Route::Deliver(None));
        assert_eq!(route("POST", "/webhooks/acme"), Route::Deliver(Some("acme".into())));
        assert_eq!(route("POST", "/webhooks/acme/x"), Route::NotFound);
        assert_eq!(route("POST", "/webhooks/acme%20corp"), Route::Deliver(Some("acme corp".into())));
        assert_eq!(route("POST", "/webhooks/caf%C3%A9"), Route::Deliver(Some("café".into())));
        assert_eq!(route("POST", "/webhooks/%FF"), Route::NotFound);
        assert_eq!(route("GET", "/webhooks/acme"), Route::WrongMethod("POST"));
        assert_eq!(route("PUT", "/webhooks"), Route::WrongMethod("POST"));
        assert_eq!(route("GET", "/healthz"), Route::Health);
        assert_eq!(route("HEAD", "/metrics"), Route::Metrics);
        assert_eq!(route("POST", "/healthz"), Route::WrongMethod("GET, HEAD"));
        assert_eq!(route("GET", "/"), Route::NotFound);
        assert_eq!(route("POST", "/webhooksx"), Route::NotFound);
    }

    #[test]
    fn a_4xx_only_when_a_retry_can_never_succeed() {
        assert_eq!(refusal_status("28000", Some("unknown source")), Some(404));
        assert_eq!(refusal_status("28000", Some("disabled source")), Some(403));
        for reason in ["bad signature", "expired", "unsigned body", "unsupported algorithm"] {
            assert_eq!(refusal_status("28000", Some(reason)), Some(401), "{reason}");
        }
        assert_eq!(refusal_status("22P02", None), Some(400));
        assert_eq!(refusal_status("22004", None), Some(400));
        assert_eq!(refusal_status("22023", None), Some(400));
        assert_eq!(refusal_status("54000", None), Some(413));
        for never in ["22P05", "22003", "54001"] {
            assert_eq!(refusal_status(never, None), Some(400), "{never}");
        }
        assert_eq!(refusal_status("28000", Some("not yet valid")), None, "a clock a few seconds ahead");
        for now in ["55000", "25006", "55P03", "40P01", "40001", "42501", "57P01", "53100", "XX000"] {
            assert_eq!(refusal_status(now, None), None, "{now}");
        }
    }

    #[test]
    fn sqlstates_unpack() {
        // MAKE_SQLSTATE('2','8','0','0','0') and ('5','5','P','0','3').
        let pack = |s: &str| s.bytes().enumerate().map(|(i, b)| ((b - b'0') as i32 & 0x3f) << (6 * i)).sum::<i32>();
        for s in ["28000", "55P03", "22P02", "XX000"] {
            assert_eq!(unpack_sqlstate(pack(s)), s);
        }
    }
}
