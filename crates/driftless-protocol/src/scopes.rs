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
/// `operator.approvals`: exec and plugin approvals.
pub const APPROVALS: &str = "operator.approvals";
/// `operator.questions`.
pub const QUESTIONS: &str = "operator.questions";
/// `operator.talk`: covered by write.
pub const TALK: &str = "operator.talk";
/// `operator.sessions.read`: covered by read, write and `operator.sessions.write`.
pub const SESSIONS_READ: &str = "operator.sessions.read";
/// `operator.sessions.write`: covered by write.
pub const SESSIONS_WRITE: &str = "operator.sessions.write";

mod openclaw_methods;
pub use openclaw_methods::OPENCLAW_METHODS;

/// What calling one of OpenClaw's methods needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// This operator scope (or one covering it).
    Scope(&'static str),
    /// A scope OpenClaw derives from the params at call time (`agent`, `sessions.patch`, ...).
    Dynamic,
    /// Only node clients may call it.
    Node,
}

/// What OpenClaw's method `method` needs (`None`: not a core method of the OpenClaw release the
/// table was taken from, e.g. a plugin's).
pub fn openclaw_method_need(method: &str) -> Option<Need> {
    OPENCLAW_METHODS
        .binary_search_by(|(m, _)| (*m).cmp(method))
        .ok()
        .map(|i| OPENCLAW_METHODS[i].1)
}

/// Whether an operator session holding `granted` may have `method` relayed to OpenClaw, as
/// OpenClaw's `authorizeGatewayMethod` decides before the method's handler runs: `Err` carries the
/// scope it lacks. `health` and the scope-upgrade methods are open to every session; admin opens
/// everything; a dynamic method needs at least read (OpenClaw checks the rest against the same
/// scopes, which are exactly the upstream session's); a method outside the table needs admin
/// (OpenClaw's default for an unclassified method). Node-only methods are refused by role before
/// this is asked.
pub fn relay_allowed(method: &str, granted: &[String]) -> Result<(), &'static str> {
    if matches!(
        method,
        "health" | "device.scopes.requestUpgrade" | "device.scopes.waitUpgrade"
    ) || granted.iter().any(|g| g == ADMIN)
    {
        return Ok(());
    }
    let needed = match openclaw_method_need(method) {
        Some(Need::Scope(s)) => s,
        Some(Need::Dynamic) => READ,
        Some(Need::Node) | None => ADMIN,
    };
    if any_covers(granted, needed) {
        Ok(())
    } else {
        Err(needed)
    }
}

/// Whether a granted scope covers a needed one (OpenClaw 2026.9's `operatorScopeSatisfied`): admin
/// covers every `operator.*`; write covers read, talk and the session scopes; read and
/// `operator.sessions.write` cover `operator.sessions.read`; anything else only itself. A
/// non-operator scope is never covered by admin.
pub fn covers(granted: &str, needed: &str) -> bool {
    granted == needed
        || (granted == ADMIN && needed.starts_with("operator."))
        || (granted == WRITE && matches!(needed, READ | TALK | SESSIONS_READ | SESSIONS_WRITE))
        || ((granted == READ || granted == SESSIONS_WRITE) && needed == SESSIONS_READ)
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

    #[test]
    fn openclaw_table_is_sorted_and_agrees_with_ours() {
        assert!(OPENCLAW_METHODS.windows(2).all(|w| w[0].0 < w[1].0));
        // The methods driftless answers itself need what OpenClaw's need (`health` is open to
        // every session in both, whatever the table says).
        for (m, s) in METHODS.iter().filter(|(m, _)| *m != "health") {
            assert_eq!(openclaw_method_need(m), s.map(Need::Scope), "{m}");
        }
    }

    #[test]
    fn relay_rules() {
        let read = v(&[READ]);
        assert_eq!(relay_allowed("config.get", &read), Ok(()));
        assert_eq!(relay_allowed("sessions.list", &read), Ok(()));
        assert_eq!(relay_allowed("health", &[]), Ok(()));
        assert_eq!(relay_allowed("agents.create", &read), Err(ADMIN));
        assert_eq!(relay_allowed("chat.send", &read), Err(WRITE));
        assert_eq!(relay_allowed("chat.send", &v(&[WRITE])), Ok(()));
        assert_eq!(relay_allowed("agent", &[]), Err(READ));
        assert_eq!(
            relay_allowed("plugin.unknown.method", &v(&[WRITE])),
            Err(ADMIN)
        );
        assert_eq!(relay_allowed("plugin.unknown.method", &v(&[ADMIN])), Ok(()));
        assert_eq!(
            relay_allowed("node.invoke.result", &v(&[WRITE])),
            Err(ADMIN)
        );
    }
}
