//! Device identity proof: the signed `device` block of `connect` (shared design
//! `openclaw-protocol.md` §2.4–2.5).
//!
//! A device signs a `|`-joined payload (v3, or the older v2) with Ed25519. The gateway checks, in
//! this order: id = SHA-256 of the raw public key, `signedAt` within ±2 min, nonce present, nonce
//! equal to the challenge, signature (v3 first, then v2), public key well-formed. Each failure has
//! the exact message, `details.reason` and `details.code` OpenClaw clients expect.

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

/// How far `signedAt` may be from the gateway's clock (`DEVICE_SIGNATURE_SKEW_MS`).
pub const SIGNATURE_SKEW_MS: u64 = 2 * 60 * 1000;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the raw 32-byte key follows it.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The `device` block of `connect` params, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceProof {
    pub id: String,
    pub public_key: String,
    pub signature: String,
    pub signed_at: u64,
    pub nonce: String,
}

/// Everything a signature covers besides the device id.
#[derive(Debug, Clone, Copy)]
pub struct SignedFields<'a> {
    pub client_id: &'a str,
    pub client_mode: &'a str,
    /// The effective role (`"operator"` when the client sent none).
    pub role: &'a str,
    /// `params.scopes` exactly as sent, in order.
    pub scopes: &'a [String],
    pub signed_at_ms: u64,
    /// `auth.token ?? auth.deviceToken ?? auth.bootstrapToken` (see [`signature_token`]).
    pub token: Option<&'a str>,
    pub nonce: &'a str,
    /// Claimed `client.platform` (v3 only).
    pub platform: Option<&'a str>,
    /// Claimed `client.deviceFamily` (v3 only).
    pub device_family: Option<&'a str>,
}

impl<'a> SignedFields<'a> {
    /// What a `connect` request's signature must cover, as the gateway checks it: the request's
    /// client, role, scopes and credential, and the proof's own time and nonce.
    pub fn of_connect(params: &'a crate::ConnectParams<'_>, proof: &'a DeviceProof) -> Self {
        SignedFields {
            client_id: &params.client.id,
            client_mode: &params.client.mode,
            role: &params.role,
            scopes: &params.scopes,
            signed_at_ms: proof.signed_at,
            token: params.auth.as_ref().and_then(|a| {
                signature_token(
                    a.token.as_deref(),
                    a.device_token.as_deref(),
                    a.bootstrap_token.as_deref(),
                )
            }),
            nonce: &proof.nonce,
            platform: Some(&params.client.platform),
            device_family: params.client.device_family.as_deref(),
        }
    }
}

/// The token a signature covers: `auth.token ?? auth.deviceToken ?? auth.bootstrapToken`.
pub fn signature_token<'a>(
    token: Option<&'a str>,
    device_token: Option<&'a str>,
    bootstrap_token: Option<&'a str>,
) -> Option<&'a str> {
    token.or(device_token).or(bootstrap_token)
}

/// Trim, then lower-case ASCII A–Z only (so `İOS` → `İos`, as OpenClaw does).
pub fn normalize_metadata(value: Option<&str>) -> String {
    value
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn common_fields(version: &str, device_id: &str, f: &SignedFields<'_>) -> Vec<String> {
    vec![
        version.to_owned(),
        device_id.to_owned(),
        f.client_id.to_owned(),
        f.client_mode.to_owned(),
        f.role.to_owned(),
        f.scopes.join(","),
        f.signed_at_ms.to_string(),
        f.token.unwrap_or("").to_owned(),
        f.nonce.to_owned(),
    ]
}

/// The v2 payload: `v2|id|client|mode|role|scopes|signedAt|token|nonce`.
pub fn payload_v2(device_id: &str, f: &SignedFields<'_>) -> String {
    common_fields("v2", device_id, f).join("|")
}

/// The v3 payload: v2's fields plus normalised platform and device family.
pub fn payload_v3(device_id: &str, f: &SignedFields<'_>) -> String {
    let mut parts = common_fields("v3", device_id, f);
    parts.push(normalize_metadata(f.platform));
    parts.push(normalize_metadata(f.device_family));
    parts.join("|")
}

/// Why a device proof was refused. [`message`](Self::message), [`reason`](Self::reason) and
/// [`code`](Self::code) are the exact wire strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeviceAuthError {
    #[error("device identity mismatch")]
    DeviceIdMismatch,
    #[error("device signature expired")]
    SignatureExpired,
    #[error("device nonce required")]
    NonceRequired,
    #[error("device nonce mismatch")]
    NonceMismatch,
    #[error("device signature invalid")]
    SignatureInvalid,
    #[error("device public key invalid")]
    PublicKeyInvalid,
}

impl DeviceAuthError {
    /// The error message, also the close reason.
    pub fn message(self) -> &'static str {
        match self {
            Self::DeviceIdMismatch => "device identity mismatch",
            Self::SignatureExpired => "device signature expired",
            Self::NonceRequired => "device nonce required",
            Self::NonceMismatch => "device nonce mismatch",
            Self::SignatureInvalid => "device signature invalid",
            Self::PublicKeyInvalid => "device public key invalid",
        }
    }

    /// `details.reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::DeviceIdMismatch => "device-id-mismatch",
            Self::SignatureExpired => "device-signature-stale",
            Self::NonceRequired => "device-nonce-missing",
            Self::NonceMismatch => "device-nonce-mismatch",
            Self::SignatureInvalid => "device-signature",
            Self::PublicKeyInvalid => "device-public-key",
        }
    }

    /// `details.code`.
    pub fn code(self) -> &'static str {
        match self {
            Self::DeviceIdMismatch => "DEVICE_AUTH_DEVICE_ID_MISMATCH",
            Self::SignatureExpired => "DEVICE_AUTH_SIGNATURE_EXPIRED",
            Self::NonceRequired => "DEVICE_AUTH_NONCE_REQUIRED",
            Self::NonceMismatch => "DEVICE_AUTH_NONCE_MISMATCH",
            Self::SignatureInvalid => "DEVICE_AUTH_SIGNATURE_INVALID",
            Self::PublicKeyInvalid => "DEVICE_AUTH_PUBLIC_KEY_INVALID",
        }
    }

    /// The `details` object of the error frame.
    pub fn details(self) -> crate::payloads::ErrorDetails {
        crate::payloads::ErrorDetails {
            reason: Some(std::borrow::Cow::Borrowed(self.reason())),
            ..crate::payloads::ErrorDetails::code(self.code())
        }
    }
}

/// Base64 that tolerates padding or its absence (clients differ).
const fn lenient(alphabet: &base64::alphabet::Alphabet) -> GeneralPurpose {
    GeneralPurpose::new(
        alphabet,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}
const URL_LENIENT: GeneralPurpose = lenient(&base64::alphabet::URL_SAFE);
const STD_LENIENT: GeneralPurpose = lenient(&base64::alphabet::STANDARD);

/// base64url, falling back to standard base64.
fn decode_b64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    URL_LENIENT
        .decode(s)
        .or_else(|_| STD_LENIENT.decode(s))
        .ok()
}

/// The key bytes of a `publicKey` field: base64url raw, or a PEM SPKI (anything containing `BEGIN`).
/// These bytes are what the device id hashes; they need not be a valid key.
pub fn public_key_bytes(public_key: &str) -> Option<Vec<u8>> {
    if public_key.contains("BEGIN") {
        let body: String = public_key
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = decode_b64(&body)?;
        der.strip_prefix(&SPKI_PREFIX[..])
            .filter(|raw| raw.len() == 32)
            .map(<[u8]>::to_vec)
    } else {
        decode_b64(public_key).filter(|b| !b.is_empty())
    }
}

/// Lowercase hex SHA-256 of `bytes`: the device id of a raw public key.
pub fn device_id_of(raw_public_key: &[u8]) -> String {
    Sha256::digest(raw_public_key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Raw key bytes as the wire's `publicKey` (base64url, no padding).
pub fn encode_public_key(key: &VerifyingKey) -> String {
    general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes())
}

/// An SPKI PEM for `key` (what OpenClaw keeps in `identity/device.json`).
pub fn public_key_pem(key: &VerifyingKey) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    pem("PUBLIC KEY", &der)
}

/// DER prefix of an Ed25519 PKCS#8 private key; the 32-byte seed follows it.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A PKCS#8 PEM for `key`.
pub fn private_key_pem(key: &SigningKey) -> String {
    let mut der = PKCS8_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    let out = pem("PRIVATE KEY", &der);
    der.zeroize();
    out
}

/// The signing key in a PKCS#8 PEM written by [`private_key_pem`] (or by Node's `crypto`).
pub fn parse_private_key_pem(pem_text: &str) -> Option<SigningKey> {
    let body: String = pem_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let mut der = decode_b64(&body)?;
    let seed: [u8; 32] = der.strip_prefix(&PKCS8_PREFIX[..])?.try_into().ok()?;
    let key = SigningKey::from_bytes(&seed);
    der.zeroize();
    Some(key)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Signs `payload`, base64url without padding (86 characters).
pub fn sign(key: &SigningKey, payload: &str) -> String {
    general_purpose::URL_SAFE_NO_PAD.encode(key.sign(payload.as_bytes()).to_bytes())
}

/// Builds a signed v3 `device` block for `fields` (the client side of the handshake).
pub fn prove(key: &SigningKey, fields: &SignedFields<'_>) -> DeviceProof {
    let verifying = key.verifying_key();
    let id = device_id_of(verifying.as_bytes());
    DeviceProof {
        signature: sign(key, &payload_v3(&id, fields)),
        id,
        public_key: encode_public_key(&verifying),
        signed_at: fields.signed_at_ms,
        nonce: fields.nonce.to_owned(),
    }
}

/// Which payload version a valid signature covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadVersion {
    V2,
    V3,
}

/// A device whose proof checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDevice {
    pub device_id: String,
    /// The public key normalised to base64url raw (what the pairing store keeps).
    pub public_key: String,
    pub version: PayloadVersion,
}

/// Checks `proof` in the documented order. `fields.signed_at_ms` and `fields.nonce` are ignored:
/// the proof's own values are what was signed; `expected_nonce` is the challenge nonce.
pub fn verify(
    proof: &DeviceProof,
    fields: &SignedFields<'_>,
    expected_nonce: &str,
    now_ms: u64,
) -> Result<VerifiedDevice, DeviceAuthError> {
    let key_bytes = public_key_bytes(&proof.public_key);
    match &key_bytes {
        Some(b) if device_id_of(b) == proof.id => {}
        _ => return Err(DeviceAuthError::DeviceIdMismatch),
    }
    if now_ms.abs_diff(proof.signed_at) > SIGNATURE_SKEW_MS {
        return Err(DeviceAuthError::SignatureExpired);
    }
    if proof.nonce.trim().is_empty() {
        return Err(DeviceAuthError::NonceRequired);
    }
    if proof.nonce != expected_nonce {
        return Err(DeviceAuthError::NonceMismatch);
    }
    // The key bytes hashed to the claimed id, but may still not be a usable Ed25519 key (wrong
    // length, not a curve point, small order). OpenClaw's verify would throw and report a bad
    // signature; we name the real cause, which is the last row of the documented table.
    let key = key_bytes
        .as_deref()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .filter(|k| !k.is_weak())
        .ok_or(DeviceAuthError::PublicKeyInvalid)?;
    let signature = decode_b64(&proof.signature)
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or(DeviceAuthError::SignatureInvalid)?;
    let signed = SignedFields {
        signed_at_ms: proof.signed_at,
        nonce: &proof.nonce,
        ..*fields
    };
    let version = [
        (PayloadVersion::V3, payload_v3(&proof.id, &signed)),
        (PayloadVersion::V2, payload_v2(&proof.id, &signed)),
    ]
    .into_iter()
    .find(|(_, payload)| key.verify_strict(payload.as_bytes(), &signature).is_ok())
    .map(|(v, _)| v)
    .ok_or(DeviceAuthError::SignatureInvalid)?;
    Ok(VerifiedDevice {
        device_id: proof.id.clone(),
        public_key: encode_public_key(&key),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn fields<'a>(scopes: &'a [String], token: Option<&'a str>) -> SignedFields<'a> {
        SignedFields {
            client_id: "openclaw-macos",
            client_mode: "ui",
            role: "operator",
            scopes,
            signed_at_ms: 1_700_000_000_000,
            token,
            nonce: "nonce-abc",
            platform: Some("  IOS  "),
            device_family: Some("  iPhone  "),
        }
    }

    #[test]
    fn protocol_doc_vectors() {
        let s = scopes(&["operator.admin", "operator.read"]);
        assert_eq!(
            payload_v2("dev-1", &fields(&s, None)),
            "v2|dev-1|openclaw-macos|ui|operator|operator.admin,operator.read|1700000000000||nonce-abc"
        );
        assert_eq!(
            payload_v3("dev-1", &fields(&s, Some("tok-123"))),
            "v3|dev-1|openclaw-macos|ui|operator|operator.admin,operator.read|1700000000000|tok-123|nonce-abc|ios|iphone"
        );
        let s2 = scopes(&["operator.read"]);
        let f = SignedFields {
            client_id: "openclaw-ios",
            client_mode: "ui",
            role: "operator",
            scopes: &s2,
            signed_at_ms: 1_700_000_000_001,
            token: None,
            nonce: "nonce-def",
            platform: None,
            device_family: None,
        };
        assert_eq!(
            payload_v3("dev-2", &f),
            "v3|dev-2|openclaw-ios|ui|operator|operator.read|1700000000001||nonce-def||"
        );
    }

    #[test]
    fn metadata_normalisation_is_ascii_only() {
        assert_eq!(normalize_metadata(Some("İOS")), "İos");
        assert_eq!(normalize_metadata(Some("   ")), "");
        assert_eq!(normalize_metadata(None), "");
    }

    #[test]
    fn signature_token_order() {
        assert_eq!(signature_token(Some("a"), Some("b"), Some("c")), Some("a"));
        assert_eq!(signature_token(None, Some("b"), Some("c")), Some("b"));
        assert_eq!(signature_token(None, None, Some("c")), Some("c"));
        assert_eq!(signature_token(None, None, None), None);
    }

    const NOW: u64 = 1_700_000_000_000;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn signed(s: &[String], nonce: &str, at: u64) -> DeviceProof {
        let f = SignedFields {
            signed_at_ms: at,
            nonce,
            ..fields(s, Some("tok"))
        };
        prove(&key(), &f)
    }

    fn check(p: &DeviceProof, s: &[String]) -> Result<VerifiedDevice, DeviceAuthError> {
        verify(p, &fields(s, Some("tok")), "nonce-abc", NOW)
    }

    #[test]
    fn round_trip_shapes_and_v3() {
        let s = scopes(&["operator.read"]);
        let p = signed(&s, "nonce-abc", NOW);
        assert_eq!(p.id.len(), 64);
        assert!(
            p.id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(p.public_key.len(), 43);
        assert_eq!(p.signature.len(), 86);
        let v = check(&p, &s).unwrap();
        assert_eq!(v.version, PayloadVersion::V3);
        assert_eq!(v.device_id, p.id);
        assert_eq!(v.public_key, p.public_key);
        // Skew is inclusive at exactly two minutes, either side.
        let at_edge = signed(&s, "nonce-abc", NOW - SIGNATURE_SKEW_MS);
        assert!(check(&at_edge, &s).is_ok());
        let ahead = signed(&s, "nonce-abc", NOW + SIGNATURE_SKEW_MS);
        assert!(check(&ahead, &s).is_ok());
    }

    #[test]
    fn v2_signature_accepted() {
        let s = scopes(&["operator.read"]);
        let k = key();
        let id = device_id_of(k.verifying_key().as_bytes());
        let f = fields(&s, Some("tok"));
        let p = DeviceProof {
            signature: sign(&k, &payload_v2(&id, &f)),
            id,
            public_key: encode_public_key(&k.verifying_key()),
            signed_at: NOW,
            nonce: "nonce-abc".into(),
        };
        assert_eq!(check(&p, &s).unwrap().version, PayloadVersion::V2);
    }

    #[test]
    fn pem_public_key_accepted_and_normalised() {
        let s = scopes(&[]);
        let mut p = signed(&s, "nonce-abc", NOW);
        let b64url = p.public_key.clone();
        p.public_key = public_key_pem(&key().verifying_key());
        let v = check(&p, &s).unwrap();
        assert_eq!(v.public_key, b64url);
    }

    #[test]
    fn private_key_pem_round_trips() {
        let k = key();
        let back = parse_private_key_pem(&private_key_pem(&k)).unwrap();
        assert_eq!(back.to_bytes(), k.to_bytes());
        assert!(
            parse_private_key_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_none()
        );
    }

    #[test]
    fn each_failure_in_order_with_wire_strings() {
        let s = scopes(&["operator.read"]);
        let good = signed(&s, "nonce-abc", NOW);

        let mut p = good.clone();
        p.id = "0".repeat(64);
        assert_eq!(check(&p, &s), Err(DeviceAuthError::DeviceIdMismatch));
        let mut p = good.clone();
        p.public_key = "!!not base64!!".into();
        assert_eq!(check(&p, &s), Err(DeviceAuthError::DeviceIdMismatch));

        // Stale and nonce-less at once: staleness is reported first.
        let p = signed(&s, " ", NOW - SIGNATURE_SKEW_MS - 1);
        assert_eq!(check(&p, &s), Err(DeviceAuthError::SignatureExpired));
        let p = signed(&s, "nonce-abc", NOW + SIGNATURE_SKEW_MS + 1);
        assert_eq!(check(&p, &s), Err(DeviceAuthError::SignatureExpired));

        let p = signed(&s, "  ", NOW);
        assert_eq!(check(&p, &s), Err(DeviceAuthError::NonceRequired));
        let p = signed(&s, "nonce-other", NOW);
        assert_eq!(check(&p, &s), Err(DeviceAuthError::NonceMismatch));

        // Signed for other scopes (a replay with widened scopes).
        let admin = scopes(&["operator.admin"]);
        assert_eq!(check(&good, &admin), Err(DeviceAuthError::SignatureInvalid));
        let mut p = good.clone();
        p.signature = "garbage".into();
        assert_eq!(check(&p, &s), Err(DeviceAuthError::SignatureInvalid));

        // 16 bytes: hashes to its id, but is no Ed25519 key.
        let short = [9u8; 16];
        let mut p = good.clone();
        p.public_key = general_purpose::URL_SAFE_NO_PAD.encode(short);
        p.id = device_id_of(&short);
        assert_eq!(check(&p, &s), Err(DeviceAuthError::PublicKeyInvalid));

        let e = DeviceAuthError::PublicKeyInvalid;
        assert_eq!(
            (e.message(), e.reason(), e.code()),
            (
                "device public key invalid",
                "device-public-key",
                "DEVICE_AUTH_PUBLIC_KEY_INVALID"
            )
        );
        assert_eq!(
            serde_json::to_value(DeviceAuthError::SignatureExpired.details()).unwrap(),
            serde_json::json!({"code": "DEVICE_AUTH_SIGNATURE_EXPIRED", "reason": "device-signature-stale"})
        );
        for e in [
            DeviceAuthError::DeviceIdMismatch,
            DeviceAuthError::SignatureExpired,
            DeviceAuthError::NonceRequired,
            DeviceAuthError::NonceMismatch,
            DeviceAuthError::SignatureInvalid,
            DeviceAuthError::PublicKeyInvalid,
        ] {
            assert_eq!(e.to_string(), e.message());
            assert!(e.code().starts_with("DEVICE_AUTH_"));
        }
    }

    #[test]
    fn standard_base64_signature_accepted() {
        let s = scopes(&["operator.read"]);
        let mut p = signed(&s, "nonce-abc", NOW);
        let raw = decode_b64(&p.signature).unwrap();
        p.signature = general_purpose::STANDARD.encode(raw);
        assert!(check(&p, &s).is_ok());
    }
}
