//! Operator scope rules (`operator-scope-compat.ts`, `normalizeDeviceAuthScopes`).

const ADMIN: &str = "operator.admin";
const READ: &str = "operator.read";
const WRITE: &str = "operator.write";

/// Trim, drop empties, add what `admin`/`write` imply, dedupe, sort.
pub fn normalize_scopes(scopes: &[String]) -> Vec<String> {
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

/// Whether `granted` covers every scope in `requested`: admin covers every `operator.*`, write
/// covers read, everything else must match exactly.
pub fn scopes_allow(granted: &[String], requested: &[String]) -> bool {
    let has = |s: &str| granted.iter().any(|g| g == s);
    requested
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .all(|r| has(r) || (r.starts_with("operator.") && has(ADMIN)) || (r == READ && has(WRITE)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn normalise_and_allow() {
        assert_eq!(
            normalize_scopes(&v(&[" operator.admin", "operator.pairing", ""])),
            v(&[
                "operator.admin",
                "operator.pairing",
                "operator.read",
                "operator.write"
            ])
        );
        assert_eq!(
            normalize_scopes(&v(&["operator.write"])),
            v(&["operator.read", "operator.write"])
        );
        assert!(scopes_allow(
            &v(&["operator.admin"]),
            &v(&["operator.pairing", "operator.read"])
        ));
        assert!(scopes_allow(
            &v(&["operator.write"]),
            &v(&["operator.read"])
        ));
        assert!(!scopes_allow(
            &v(&["operator.read"]),
            &v(&["operator.write"])
        ));
        assert!(!scopes_allow(
            &v(&["operator.read"]),
            &v(&["operator.pairing"])
        ));
        assert!(!scopes_allow(&v(&["operator.admin"]), &v(&["node.x"])));
        assert!(scopes_allow(&v(&[]), &v(&[])));
    }
}
