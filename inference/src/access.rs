//! Who may call what: bearer tokens with scopes.
//!
//! Three scopes: `admin` (every change: definitions, packages, activations, training,
//! feedback), `read` (definitions, versions, training runs, keys, `/readyz`, `/metrics`) and
//! `score` (device apps). The admin token holds the other two. A box that listens only on
//! loopback leaves `read` and `score` open unless a token is configured for them (what it
//! always did); a box listening beyond loopback requires a token on every route but
//! `/healthz`. Tokens are compared in constant time.

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Read,
    Score,
}

/// The configured tokens and whether the box is reachable only from itself.
#[derive(Debug, Clone)]
pub struct Access {
    pub admin: String,
    pub read: Option<String>,
    pub score: Option<String>,
    /// The server listens on a loopback address only.
    pub loopback: bool,
}

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one the box does not know: 401.
    Unauthenticated,
    /// A known token whose scope does not cover the route: 403.
    Forbidden,
}

impl Access {
    /// Lets a request presenting `token` (if any) through to a route needing `scope`.
    pub fn check(&self, token: Option<&str>, scope: Scope) -> Result<(), Denied> {
        let scoped = match scope {
            Scope::Admin => None,
            Scope::Read => self.read.as_deref(),
            Scope::Score => self.score.as_deref(),
        };
        let open = scope != Scope::Admin && self.loopback && scoped.is_none();
        let Some(token) = token else {
            return if open {
                Ok(())
            } else {
                Err(Denied::Unauthenticated)
            };
        };
        let is = |known: Option<&str>| known.is_some_and(|k| constant_time_eq(token, k));
        if is(Some(&self.admin)) || is(scoped) {
            return Ok(());
        }
        if is(self.read.as_deref()) || is(self.score.as_deref()) {
            // A valid token of another scope: known, but not allowed here. On an open route it
            // still passes: presenting a token never takes away what no token would get.
            return if open { Ok(()) } else { Err(Denied::Forbidden) };
        }
        Err(Denied::Unauthenticated)
    }
}

impl Access {
    /// Which token `token` is, for logs: `admin`, `read`, `score`, `none` (no token) or
    /// `unknown`. Never the token itself.
    pub fn role(&self, token: Option<&str>) -> &'static str {
        let Some(token) = token else { return "none" };
        let is = |known: Option<&str>| known.is_some_and(|k| constant_time_eq(token, k));
        if is(Some(&self.admin)) {
            "admin"
        } else if is(self.read.as_deref()) {
            "read"
        } else if is(self.score.as_deref()) {
            "score"
        } else {
            "unknown"
        }
    }
}

/// Compares without leaking where the first difference is.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(loopback: bool, read: Option<&str>, score: Option<&str>) -> Access {
        Access {
            admin: "root".into(),
            read: read.map(str::to_owned),
            score: score.map(str::to_owned),
            loopback,
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq("secret", "secret"));
        assert!(!constant_time_eq("secreT", "secret"));
        assert!(!constant_time_eq("secret1", "secret"));
        assert!(!constant_time_eq("", ""));
    }

    #[test]
    fn loopback_leaves_read_and_score_open_unless_they_have_tokens() {
        let open = access(true, None, None);
        assert_eq!(open.check(None, Scope::Read), Ok(()));
        assert_eq!(open.check(None, Scope::Score), Ok(()));
        assert_eq!(open.check(None, Scope::Admin), Err(Denied::Unauthenticated));
        assert_eq!(open.check(Some("root"), Scope::Admin), Ok(()));
        let scoped = access(true, Some("r"), Some("s"));
        assert_eq!(
            scoped.check(None, Scope::Score),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(scoped.check(Some("s"), Scope::Score), Ok(()));
        assert_eq!(
            scoped.check(Some("r"), Scope::Score),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            scoped.check(Some("s"), Scope::Admin),
            Err(Denied::Forbidden)
        );
        assert_eq!(scoped.check(Some("root"), Scope::Read), Ok(()));
    }

    #[test]
    fn beyond_loopback_every_scope_needs_a_token() {
        let exposed = access(false, None, Some("s"));
        assert_eq!(
            exposed.check(None, Scope::Read),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            exposed.check(Some("s"), Scope::Read),
            Err(Denied::Forbidden)
        );
        assert_eq!(exposed.check(Some("root"), Scope::Read), Ok(()));
        assert_eq!(exposed.check(Some("s"), Scope::Score), Ok(()));
        assert_eq!(
            exposed.check(Some("nope"), Scope::Score),
            Err(Denied::Unauthenticated)
        );
    }
}
