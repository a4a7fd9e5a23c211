//! What the writ's `act` must say at this gateway, beyond the request digest: the action is the
//! request's type (`exec` for a command, `http` for an HTTP request), and where the gateway's
//! configuration names the resource a tool or a path is (what policy decided on), the writ's
//! resource is that one. Without this, a writ issued for a harmless action or resource under
//! the same audience would carry any request the holder chose.

use writ_attestation::writ::Refusal;
use writ_attestation::writ::claims::{Form, WritClaims};

/// Checks the writ's action against `action` and, if the gateway names one, its resource
/// against `resource` (`action` and `resource` refusals).
pub fn check_act(claims: &WritClaims, action: &str, resource: Option<&str>) -> Result<(), Refusal> {
    let Form::Execution(act) = claims.form() else {
        return Err(Refusal::new("form", "not an execution writ"));
    };
    if act.name != action {
        return Err(Refusal::new(
            "action",
            format!(
                "the writ is for action {:?}; this request is {action:?}",
                act.name
            ),
        ));
    }
    if let Some(r) = resource
        && act.resource != r
    {
        return Err(Refusal::new(
            "resource",
            format!(
                "the writ is for resource {:?}; this gateway serves this request as {r:?}",
                act.resource
            ),
        ));
    }
    Ok(())
}

/// The resource of the longest route whose prefix covers `path` by whole segments (`/v1/pay`
/// covers `/v1/pay` and `/v1/pay/x`, never `/v1/payments`), if any.
pub fn route<'a>(
    routes: impl IntoIterator<Item = (&'a str, &'a str)>,
    path: &str,
) -> Option<&'a str> {
    routes
        .into_iter()
        .map(|(prefix, resource)| (prefix.trim_end_matches('/'), resource))
        .filter(|(p, _)| {
            p.is_empty()
                || path == *p
                || path
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .max_by_key(|(p, _)| p.len())
        .map(|(_, r)| r)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn routes_match_by_whole_segments_and_the_longest_wins() {
        let r = [
            ("/v1/pay", "api/pay"),
            ("/v1/pay/refund", "api/refund"),
            ("/", "api"),
        ];
        assert_eq!(super::route(r, "/v1/pay"), Some("api/pay"));
        assert_eq!(super::route(r, "/v1/pay/x"), Some("api/pay"));
        assert_eq!(super::route(r, "/v1/pay/refund/1"), Some("api/refund"));
        assert_eq!(super::route(r, "/v1/payments"), Some("api"));
        assert_eq!(super::route(r.into_iter().take(2), "/v1/payments"), None);
    }
}
