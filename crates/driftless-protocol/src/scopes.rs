//! Operator scopes, the one rule for which scope covers which (OpenClaw's `roleScopesAllow`,
//! shared design §3.10), and the method table: every method served with the scope it needs.

/// `operator.admin`: covers every `operator.*` scope.
pub const ADMIN: &str = "operator.admin";
/// `operator.read`.
pub const READ: &str = "operator.read";
/// `operator.write`: covers `operator.read`.
pub const WRITE: &str = "operator.write";
/// `operator.pairing`: the device and pairing methods and events.
pub const PAIRING: &str = "operator.pairing";

/// Whether a granted scope covers a needed one: admin covers every `operator.*`, write covers
/// read, anything else only itself. A non-operator scope is never covered by admin.
pub fn covers(granted: &str, needed: &str) -> bool {
    granted == needed
        || (granted == ADMIN && needed.starts_with("operator."))
        || (granted == WRITE && needed == READ)
}

/// Whether any of `granted` covers `needed`.
pub fn any_covers(granted: &[String], needed: &str) -> bool {
    granted.iter().any(|g| covers(g, needed))
}

/// Whether `granted` covers every scope in `requested` (blank entries are ignored).
pub fn covers_all(granted: &[String], requested: &[String]) -> bool {
    requested
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .all(|r| any_covers(granted, r))
}

/// OpenClaw's `normalizeDeviceAuthScopes`: trim, drop empties, add what admin and write imply,
/// dedupe, sort. What a device token's scopes are stored as.
pub fn normalize(scopes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = scopes
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if out.iter().any(|s| s == ADMIN) {
        out.extend([READ.to_owned(), WRITE.to_owned()]);
    }
    if out.iter().any(|s| s == WRITE) {
        out.push(READ.to_owned());
    }
    out.sort();
    out.dedup();
    out
}

/// Methods served, with the scope each needs (`None`: any authenticated client, any role). In the
/// order `hello-ok.features.methods` lists them.
pub const METHODS: &[(&str, Option<&str>)] = &[
    ("health", None),
    ("status", Some(READ)),
    ("system-presence", Some(READ)),
    ("secrets.reload", Some(ADMIN)),
    ("device.pair.list", Some(PAIRING)),
    ("device.pair.approve", Some(PAIRING)),
    ("device.pair.reject", Some(PAIRING)),
    ("device.pair.remove", Some(PAIRING)),
    ("device.token.rotate", Some(PAIRING)),
    ("device.token.revoke", Some(PAIRING)),
];

/// Events sent, with the scope a session needs to receive each (OpenClaw's `EVENT_SCOPE_GUARDS`;
/// `None`: every session). In the order `hello-ok.features.events` lists them.
pub const EVENTS: &[(&str, Option<&str>)] = &[
    ("connect.challenge", None),
    ("tick", None),
    ("shutdown", None),
    ("device.pair.requested", Some(PAIRING)),
    ("device.pair.resolved", Some(PAIRING)),
];

/// The scope `method` needs: `None` for an unknown method, `Some(None)` for one any session may
/// call.
pub fn method_scope(method: &str) -> Option<Option<&'static str>> {
    METHODS.iter().find(|(m, _)| *m == method).map(|(_, s)| *s)
}

/// The scope a session needs to receive `event` (`None`: every session, or unknown).
pub fn event_scope(event: &str) -> Option<&'static str> {
    EVENTS
        .iter()
        .find(|(e, _)| *e == event)
        .and_then(|(_, s)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scope_implication() {
        let admin = v(&[ADMIN]);
        let write = v(&[WRITE]);
        assert!(any_covers(&admin, READ));
        assert!(any_covers(&write, READ));
        assert!(!any_covers(&write, ADMIN));
        assert!(!any_covers(&[], READ));
    }

    #[test]
    fn normalise_and_allow() {
        assert_eq!(
            normalize(&v(&[" operator.admin", "operator.pairing", ""])),
            v(&[
                "operator.admin",
                "operator.pairing",
                "operator.read",
                "operator.write"
            ])
        );
        assert_eq!(
            normalize(&v(&["operator.write"])),
            v(&["operator.read", "operator.write"])
        );
        assert!(covers_all(
            &v(&["operator.admin"]),
            &v(&["operator.pairing", "operator.read"])
        ));
        assert!(covers_all(&v(&["operator.write"]), &v(&["operator.read"])));
        assert!(!covers_all(&v(&["operator.read"]), &v(&["operator.write"])));
        assert!(!covers_all(
            &v(&["operator.read"]),
            &v(&["operator.pairing"])
        ));
        assert!(!covers_all(&v(&["operator.admin"]), &v(&["node.x"])));
        assert!(covers_all(&v(&[]), &v(&[])));
    }

    #[test]
    fn every_method_scope_is_an_operator_scope() {
        for (m, s) in METHODS {
            assert!(s.is_none_or(|s| s.starts_with("operator.")), "{m}");
            assert_eq!(method_scope(m), Some(*s));
        }
        assert_eq!(method_scope("nope"), None);
    }
}
