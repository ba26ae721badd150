//! Where driftless keeps its config and state (XDG base directories).

use std::path::{Path, PathBuf};

use crate::Env;

/// The environment variable that names the config file explicitly.
pub const CONFIG_ENV: &str = "DRIFTLESS_CONFIG";
/// The environment variable that names the state directory explicitly.
pub const STATE_DIR_ENV: &str = "DRIFTLESS_STATE_DIR";

/// `$HOME`, else `/`. The one HOME fallback: every path under the user's home starts here.
pub fn home(env: &Env) -> PathBuf {
    env.non_empty("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// An XDG base directory variable, if set to an absolute path. The XDG Base Directory spec says a
/// relative value is invalid and must be ignored: a relative state dir would be written into config
/// and resolved against another directory on the next start.
pub fn xdg_var(env: &Env, name: &str) -> Option<PathBuf> {
    env.non_empty(name)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
pub fn config_home(env: &Env) -> PathBuf {
    xdg_var(env, "XDG_CONFIG_HOME").unwrap_or_else(|| home(env).join(".config"))
}

/// `$XDG_STATE_HOME`, else `~/.local/state`.
pub fn state_home(env: &Env) -> PathBuf {
    xdg_var(env, "XDG_STATE_HOME").unwrap_or_else(|| home(env).join(".local").join("state"))
}

/// `$XDG_CACHE_HOME`, else `~/.cache`.
pub fn cache_home(env: &Env) -> PathBuf {
    xdg_var(env, "XDG_CACHE_HOME").unwrap_or_else(|| home(env).join(".cache"))
}

/// `$XDG_RUNTIME_DIR` (no fallback: the spec leaves that to the application).
pub fn runtime_dir(env: &Env) -> Option<PathBuf> {
    xdg_var(env, "XDG_RUNTIME_DIR")
}

/// `$DRIFTLESS_CONFIG`, else `$XDG_CONFIG_HOME/driftless/config.toml`, else `~/.config/...`.
pub fn config_file(env: &Env) -> PathBuf {
    if let Some(p) = env.non_empty(CONFIG_ENV) {
        return PathBuf::from(p);
    }
    config_home(env).join("driftless").join("config.toml")
}

/// `$DRIFTLESS_STATE_DIR`, else `$XDG_STATE_HOME/driftless`, else `~/.local/state/driftless`.
pub fn state_dir(env: &Env) -> PathBuf {
    if let Some(p) = env.non_empty(STATE_DIR_ENV) {
        return PathBuf::from(p);
    }
    state_home(env).join("driftless")
}

/// Where `init` puts the generated gateway token.
pub fn default_gateway_token_file(state_dir: &Path) -> PathBuf {
    state_dir.join("secrets").join("gateway-token")
}

/// Expands a leading `~` and `${VAR}` occurrences. Unset variables are an error, because a path
/// that silently lost a component would point at the wrong file.
pub fn expand(raw: &str, env: &Env) -> Result<PathBuf, String> {
    let mut out = String::with_capacity(raw.len());
    let rest = if raw == "~" || raw.starts_with("~/") {
        out.push_str(&home(env).to_string_lossy());
        &raw[1..]
    } else {
        raw
    };
    // Byte offsets throughout: `${` and `}` are ASCII, so every split lands on a char boundary.
    let mut rest = rest;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let Some(len) = rest[at + 2..].find('}') else {
            return Err(format!("unterminated ${{ in path {raw:?}"));
        };
        let name = &rest[at + 2..at + 2 + len];
        match env.get(name) {
            Some(v) => out.push_str(v),
            None => return Err(format!("path {raw:?} uses ${{{name}}}, which is not set")),
        }
        rest = &rest[at + 2 + len + 1..];
    }
    out.push_str(rest);
    Ok(PathBuf::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdg_and_overrides() {
        let env = Env::from_pairs([("HOME", "/h")]);
        assert_eq!(
            config_file(&env),
            PathBuf::from("/h/.config/driftless/config.toml")
        );
        assert_eq!(state_dir(&env), PathBuf::from("/h/.local/state/driftless"));
        let env = Env::from_pairs([
            ("HOME", "/h"),
            ("XDG_CONFIG_HOME", "/x"),
            ("XDG_STATE_HOME", "/s"),
        ]);
        assert_eq!(config_file(&env), PathBuf::from("/x/driftless/config.toml"));
        assert_eq!(state_dir(&env), PathBuf::from("/s/driftless"));
        let env = Env::from_pairs([
            ("DRIFTLESS_CONFIG", "/c.toml"),
            ("DRIFTLESS_STATE_DIR", "/st"),
        ]);
        assert_eq!(config_file(&env), PathBuf::from("/c.toml"));
        assert_eq!(state_dir(&env), PathBuf::from("/st"));
        // Relative XDG values are invalid (XDG spec) and ignored.
        let env = Env::from_pairs([
            ("HOME", "/h"),
            ("XDG_CONFIG_HOME", "cfg"),
            ("XDG_STATE_HOME", "./state"),
            ("XDG_CACHE_HOME", "c"),
            ("XDG_RUNTIME_DIR", "run"),
        ]);
        assert_eq!(
            config_file(&env),
            PathBuf::from("/h/.config/driftless/config.toml")
        );
        assert_eq!(state_dir(&env), PathBuf::from("/h/.local/state/driftless"));
        assert_eq!(cache_home(&env), PathBuf::from("/h/.cache"));
        assert_eq!(runtime_dir(&env), None);
    }

    #[test]
    fn expands_home_and_vars() {
        let env = Env::from_pairs([("HOME", "/h"), ("CRED", "/run/creds")]);
        assert_eq!(expand("~/a", &env).unwrap(), PathBuf::from("/h/a"));
        assert_eq!(
            expand("${CRED}/tok", &env).unwrap(),
            PathBuf::from("/run/creds/tok")
        );
        assert_eq!(
            expand("/plain/$x", &env).unwrap(),
            PathBuf::from("/plain/$x")
        );
        assert!(expand("${NOPE}/x", &env).unwrap_err().contains("NOPE"));
        // Issue 15 (9): a multi-byte name used to skip its bytes as characters, eating the tail.
        let env = Env::from_pairs([("é", "/v"), ("ДИР", "/d")]);
        assert_eq!(expand("${é}tail", &env).unwrap(), PathBuf::from("/vtail"));
        assert_eq!(
            expand("${ДИР}/ß/${é}/x", &env).unwrap(),
            PathBuf::from("/d/ß//v/x")
        );
        assert!(expand("${OPEN", &env).is_err());
    }

    /// Found by the `path_expand` fuzz target (fuzz/corpus/path_expand/regression-multibyte-name):
    /// the text after a variable whose name is not ASCII was cut, because the name was skipped by
    /// its length in bytes counted as characters.
    #[test]
    fn text_after_a_non_ascii_variable_name_is_kept() {
        let env = Env::from_pairs([("\u{70e}", "v"), ("é", "/run/é")]);
        assert_eq!(expand("${\u{70e}}x", &env).unwrap(), PathBuf::from("vx"));
        assert_eq!(
            expand("${é}/tail/${é}", &env).unwrap(),
            PathBuf::from("/run/é/tail//run/é")
        );
    }
}
