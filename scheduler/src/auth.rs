//! Who may do what: one authentication model for the gRPC and the HTTP port.
//!
//! A caller is a [`Principal`]: a name, [`Scopes`] and optionally the queues it covers. It is
//! found from, in order:
//! 1. a bearer token (`authorization: Bearer <token>`, gRPC metadata or HTTP header), compared
//!    in constant time with every configured token;
//! 2. the dashboard's session cookie (HTTP only), which names a server-side session, never the
//!    token itself; a session ends at sign-out, after [`SESSION_TTL`], or when its token is
//!    removed from the configuration;
//! 3. a verified TLS client certificate (mTLS), valid for the DNS name of a configured
//!    certificate identity (an entry without a secret);
//! 4. else the anonymous principal, with `--anonymous-scopes` (everything when no token is
//!    configured, so a laptop needs none; nothing otherwise).
//!
//! A token that is presented but unknown is refused (UNAUTHENTICATED / 401) even when
//! anonymous callers could have done the same: a typo should not silently downgrade.
//!
//! Scopes: `read` (get, watch, list), `submit` (submit, report progress), `admin` (cancel,
//! retry, pause, resume, purge; implies the other two).
//!
//! # Token entries
//! `NAME:SCOPES:QUEUES:SECRET`, one per line in `--tokens-file` (blank lines and `#` comments
//! skipped) or `;`-separated in `TAREFA_TOKENS`: `ci:submit,read:mail,images:7f3e…` or
//! `ops:admin:*:9c1d…`. SECRET is everything after the third `:` and is at least
//! [`MIN_SECRET_LEN`] bytes; an empty SECRET makes a certificate identity (mTLS only).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ring::digest;
use rustls_pki_types::{CertificateDer, ServerName};

/// Shortest secret accepted, so a token cannot be guessed.
pub const MIN_SECRET_LEN: usize = 16;
/// How long a dashboard session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most live dashboard sessions; the oldest go first.
const MAX_SESSIONS: usize = 10_000;

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Submit tasks and report their progress.
    Submit,
    /// Read tasks and queues.
    Read,
    /// Act on tasks and queues: cancel, retry, pause, resume, purge.
    Admin,
}

impl Scope {
    fn bit(self) -> u8 {
        match self {
            Scope::Submit => 1,
            Scope::Read => 2,
            Scope::Admin => 4,
        }
    }

    /// Its name in configuration and messages.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// A set of scopes; `admin` implies the others.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope at all.
    pub const NONE: Scopes = Scopes(0);
    /// Every scope.
    pub const ALL: Scopes = Scopes(7);

    /// True when these scopes allow `scope`.
    pub fn allows(self, scope: Scope) -> bool {
        self.0 & Scope::Admin.bit() != 0 || self.0 & scope.bit() != 0
    }

    /// The scope names, for `/api/session` and logs.
    pub fn names(self) -> Vec<&'static str> {
        [Scope::Submit, Scope::Read, Scope::Admin]
            .into_iter()
            .filter(|s| self.0 & s.bit() != 0)
            .map(Scope::name)
            .collect()
    }
}

impl std::fmt::Debug for Scopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl std::str::FromStr for Scopes {
    type Err = String;

    /// `submit,read`, `admin`, `all` or `none`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut scopes = Scopes::NONE;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            scopes.0 |= match part {
                "submit" => Scope::Submit.bit(),
                "read" => Scope::Read.bit(),
                "admin" | "all" => Scope::Admin.bit() | 3,
                "none" => 0,
                other => {
                    return Err(format!(
                        "unknown scope {other:?}; scopes are submit, read, admin"
                    ));
                }
            };
        }
        Ok(scopes)
    }
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The token's (or certificate identity's) name, for audit logs; `anonymous` otherwise.
    pub name: String,
    /// What it may do.
    pub scopes: Scopes,
    /// The queues it covers; `None` is every queue.
    pub queues: Option<Vec<String>>,
}

/// Why a caller is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credentials, or credentials nobody issued: UNAUTHENTICATED / 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// Known caller, not allowed: PERMISSION_DENIED / 403.
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<Denied> for tonic::Status {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Unauthenticated(message) => tonic::Status::unauthenticated(message),
            Denied::PermissionDenied(message) => tonic::Status::permission_denied(message),
        }
    }
}

impl Principal {
    /// The anonymous caller with `scopes`.
    pub fn anonymous(scopes: Scopes) -> Self {
        Self {
            name: "anonymous".to_owned(),
            scopes,
            queues: None,
        }
    }

    /// True when it covers `queue`.
    pub fn covers(&self, queue: &str) -> bool {
        self.queues
            .as_ref()
            .is_none_or(|queues| queues.iter().any(|q| q == queue))
    }

    /// Ok when it may do `scope` (on `queue`, if given).
    pub fn check(&self, scope: Scope, queue: Option<&str>) -> Result<(), Denied> {
        if !self.scopes.allows(scope) {
            return Err(self.refuse(format!("needs the {} scope", scope.name())));
        }
        if let Some(queue) = queue
            && !self.covers(queue)
        {
            return Err(self.refuse(format!("does not cover queue {queue:?}")));
        }
        Ok(())
    }

    fn refuse(&self, why: String) -> Denied {
        if self.name == "anonymous" {
            Denied::Unauthenticated(format!(
                "this needs a token (authorization: Bearer <token>); anonymous callers {why}"
            ))
        } else {
            Denied::PermissionDenied(format!("token {:?} {why}", self.name))
        }
    }
}

/// One configured token or certificate identity.
#[derive(Clone)]
pub struct TokenEntry {
    principal: Arc<Principal>,
    /// SHA-256 of the secret; `None` for a certificate identity.
    digest: Option<[u8; 32]>,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("principal", &self.principal)
            .field("secret", &"<hidden>")
            .finish()
    }
}

impl std::str::FromStr for TokenEntry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.trim().splitn(4, ':');
        let (Some(name), Some(scopes), Some(queues), Some(secret)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            // Never echo the text: it may hold a secret.
            return Err("a token entry is NAME:SCOPES:QUEUES:SECRET".to_owned());
        };
        let name = name.trim();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err("a token's name is 1-64 letters, digits, '_', '-' or '.'".to_owned());
        }
        let scopes: Scopes = scopes.parse().map_err(|e| format!("token {name:?}: {e}"))?;
        let queues = match queues.trim() {
            "*" | "" => None,
            list => {
                let queues: Vec<String> = list.split(',').map(|q| q.trim().to_owned()).collect();
                for queue in &queues {
                    tarefa_queue::validate_queue_name(queue, usize::MAX)
                        .map_err(|e| format!("token {name:?}: {e}"))?;
                }
                Some(queues)
            }
        };
        let digest = if secret.is_empty() {
            None
        } else if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "token {name:?}: the secret must be at least {MIN_SECRET_LEN} bytes"
            ));
        } else {
            Some(sha256(secret.as_bytes()))
        };
        Ok(Self {
            principal: Arc::new(Principal {
                name: name.to_owned(),
                scopes,
                queues,
            }),
            digest,
        })
    }
}

impl TokenEntry {
    /// An admin token for every queue from the legacy `--dashboard-token`, which had no
    /// minimum length.
    pub fn legacy(name: &str, secret: &str) -> Result<Self, String> {
        if secret.is_empty() {
            return Err("the token is empty".to_owned());
        }
        Ok(Self {
            principal: Arc::new(Principal {
                name: name.to_owned(),
                scopes: Scopes::ALL,
                queues: None,
            }),
            digest: Some(sha256(secret.as_bytes())),
        })
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

/// Equal in time independent of the content (both are digests of the same length).
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Parses token entries: lines of a file or `;`-separated entries.
pub fn parse_entries(text: &str, separator: char) -> Result<Vec<TokenEntry>, String> {
    text.split(separator)
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::parse)
        .collect()
}

/// Where tokens come from and what anonymous callers may do. Built from the configuration;
/// the file is read again on [`Auth::reload`].
#[derive(Clone, Default)]
pub struct AuthSettings {
    /// `--tokens-file`.
    pub tokens_file: Option<PathBuf>,
    /// Entries from `TAREFA_TOKENS` and the legacy `--dashboard-token`.
    pub inline: Vec<TokenEntry>,
    /// `--anonymous-scopes`; `None`: everything without tokens, nothing with.
    pub anonymous: Option<Scopes>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("tokens_file", &self.tokens_file)
            .field("inline", &self.inline.len())
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

struct Session {
    /// The digest of the token it was opened with: it dies with the token.
    token_digest: [u8; 32],
    expires: Instant,
}

/// The authenticator shared by both ports. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    settings: AuthSettings,
    entries: Arc<RwLock<Arc<Vec<TokenEntry>>>>,
    /// Dashboard sessions by the SHA-256 of their id.
    sessions: Arc<Mutex<HashMap<[u8; 32], Session>>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The credentials a request carries.
#[derive(Debug, Default)]
pub struct Credentials<'a> {
    /// The value of its `authorization` header.
    pub authorization: Option<&'a str>,
    /// Its session cookie's value (HTTP).
    pub session: Option<&'a str>,
    /// The verified client certificate chain (mTLS), leaf first.
    pub client_certs: Option<&'a [CertificateDer<'static>]>,
}

impl Auth {
    /// Loads the tokens.
    pub fn new(settings: AuthSettings) -> Result<Self, String> {
        let entries = Self::load(&settings)?;
        Ok(Self {
            settings,
            entries: Arc::new(RwLock::new(Arc::new(entries))),
            sessions: Arc::default(),
        })
    }

    fn load(settings: &AuthSettings) -> Result<Vec<TokenEntry>, String> {
        let mut entries = settings.inline.clone();
        if let Some(path) = &settings.tokens_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--tokens-file {}: {e}", path.display()))?;
            entries.extend(
                parse_entries(&text, '\n')
                    .map_err(|e| format!("--tokens-file {}: {e}", path.display()))?,
            );
        }
        let mut names: Vec<&str> = entries.iter().map(|e| e.principal.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("two tokens are named {:?}", pair[0]));
        }
        Ok(entries)
    }

    /// Reads the tokens file again; sessions of removed tokens end. On error the old tokens
    /// stay.
    pub fn reload(&self) -> Result<usize, String> {
        let entries = Self::load(&self.settings)?;
        let count = entries.len();
        if let Ok(mut current) = self.entries.write() {
            *current = Arc::new(entries);
        }
        Ok(count)
    }

    fn entries(&self) -> Arc<Vec<TokenEntry>> {
        self.entries
            .read()
            .map(|e| Arc::clone(&e))
            .unwrap_or_default()
    }

    /// True when any token or certificate identity is configured.
    pub fn enabled(&self) -> bool {
        !self.entries().is_empty()
    }

    /// What anonymous callers may do.
    pub fn anonymous_scopes(&self) -> Scopes {
        self.settings.anonymous.unwrap_or(if self.enabled() {
            Scopes::NONE
        } else {
            Scopes::ALL
        })
    }

    /// The entry whose secret is `token`: every entry is compared, so the time taken says
    /// nothing about which (or whether one) matched.
    fn by_secret(&self, token: &str) -> Option<TokenEntry> {
        let wanted = sha256(token.as_bytes());
        let mut found = None;
        for entry in self.entries().iter() {
            if let Some(digest) = &entry.digest
                && same_digest(digest, &wanted)
            {
                found = Some(entry.clone());
            }
        }
        found
    }

    /// Who `credentials` are. Err only when credentials were presented and are not valid.
    pub fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Arc<Principal>, Denied> {
        if !self.enabled() {
            // No token configured: nothing to check a token against, so one sent anyway (a
            // TAREFA_TOKEN left exported, talking to `tarefa dev`) is ignored.
            return Ok(Arc::new(Principal::anonymous(self.anonymous_scopes())));
        }
        if let Some(header) = credentials.authorization {
            let token = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    Denied::Unauthenticated("authorization must be 'Bearer <token>'".to_owned())
                })?;
            return self
                .by_secret(token)
                .map(|entry| entry.principal)
                .ok_or_else(|| Denied::Unauthenticated("unknown token".to_owned()));
        }
        if let Some(session) = credentials.session {
            // A stale cookie (expired, signed out, token revoked) is no credential at all:
            // the caller is anonymous, so the page can offer to sign in again.
            if let Some(principal) = self.session_principal(session) {
                return Ok(principal);
            }
        }
        if let Some(certs) = credentials.client_certs
            && let Some(principal) = self.certificate_principal(certs)
        {
            return Ok(principal);
        }
        Ok(Arc::new(Principal::anonymous(self.anonymous_scopes())))
    }

    /// The certificate identity a verified client certificate is valid for.
    fn certificate_principal(&self, certs: &[CertificateDer<'static>]) -> Option<Arc<Principal>> {
        let leaf = certs.first()?;
        let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
        self.entries()
            .iter()
            .filter(|entry| entry.digest.is_none())
            .find(|entry| {
                ServerName::try_from(entry.principal.name.as_str())
                    .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
            })
            .map(|entry| Arc::clone(&entry.principal))
    }

    /// Opens a dashboard session for `token`; returns the cookie value (a random id, not
    /// the token) and who signed in.
    pub fn open_session(&self, token: &str) -> Result<(String, Arc<Principal>), Denied> {
        let entry = self
            .by_secret(token)
            .ok_or_else(|| Denied::Unauthenticated("wrong token".to_owned()))?;
        let Some(token_digest) = entry.digest else {
            return Err(Denied::Unauthenticated("wrong token".to_owned()));
        };
        let mut id = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
            .map_err(|_| Denied::Unauthenticated("cannot open a session".to_owned()))?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.retain(|_, s| s.expires > now);
            if sessions.len() >= MAX_SESSIONS
                && let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| *k)
            {
                sessions.remove(&oldest);
            }
            sessions.insert(
                sha256(id.as_bytes()),
                Session {
                    token_digest,
                    expires: now + SESSION_TTL,
                },
            );
        }
        Ok((id, entry.principal))
    }

    fn session_principal(&self, id: &str) -> Option<Arc<Principal>> {
        let key = sha256(id.as_bytes());
        let token_digest = {
            let sessions = self.sessions.lock().ok()?;
            let session = sessions.get(&key)?;
            (session.expires > Instant::now()).then_some(session.token_digest)?
        };
        let found = self.entries().iter().find_map(|entry| {
            entry
                .digest
                .as_ref()
                .filter(|d| same_digest(d, &token_digest))
                .map(|_| Arc::clone(&entry.principal))
        });
        if found.is_none()
            && let Ok(mut sessions) = self.sessions.lock()
        {
            sessions.remove(&key);
        }
        found
    }

    /// Ends a dashboard session (sign-out).
    pub fn close_session(&self, id: &str) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(&sha256(id.as_bytes()));
        }
    }

    /// Ends every session of the token named `name` (its owner signs out everywhere).
    pub fn close_sessions_of(&self, name: &str) -> usize {
        let digests: Vec<[u8; 32]> = self
            .entries()
            .iter()
            .filter(|e| e.principal.name == name)
            .filter_map(|e| e.digest)
            .collect();
        let Ok(mut sessions) = self.sessions.lock() else {
            return 0;
        };
        let before = sessions.len();
        sessions.retain(|_, s| !digests.iter().any(|d| same_digest(d, &s.token_digest)));
        before - sessions.len()
    }
}

/// The scope each `tarefa.v1.Scheduler` RPC needs before its request is even read. An RPC
/// not listed here (one added later) needs `admin` until someone says otherwise, so a new RPC
/// is never open by accident. Queue-level checks happen in the handlers, once the request
/// names its queue.
pub fn rpc_scope(method: &str) -> Scope {
    match method {
        "SubmitTask" | "SubmitTasks" | "ReportProgress" => Scope::Submit,
        "GetTask" | "WatchTask" | "ListTasks" | "ListQueues" | "ListHandlers" => Scope::Read,
        // AnnounceHandler routes a task type's payloads to an address: admin, as is anything
        // the gate does not know.
        _ => Scope::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(entries: &str) -> Auth {
        Auth::new(AuthSettings {
            inline: parse_entries(entries, ';').expect("entries"),
            ..AuthSettings::default()
        })
        .expect("auth")
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn entries_parse_and_never_echo_secrets() {
        let entry: TokenEntry = "ci:submit,read:mail,images:0123456789abcdef:x"
            .parse()
            .expect("entry");
        assert_eq!(entry.principal.name, "ci");
        assert!(entry.principal.scopes.allows(Scope::Read));
        assert!(!entry.principal.scopes.allows(Scope::Admin));
        assert_eq!(
            entry.principal.queues,
            Some(vec!["mail".to_owned(), "images".to_owned()])
        );
        assert!(!format!("{entry:?}").contains("0123456789"));
        for bad in [
            "ci:submit:*",
            "ci:root:*:0123456789abcdef",
            "ci:read:*:short",
            "c i:read:*:0123456789abcdef",
            "ci:read:bad queue:0123456789abcdef",
        ] {
            let error = bad.parse::<TokenEntry>().expect_err(bad);
            assert!(!error.contains("0123456789abcdef"), "{error}");
        }
    }

    #[test]
    fn tokens_scopes_and_queues() {
        let auth = auth("ops:admin:*:aaaaaaaaaaaaaaaa; ci:submit:mail:bbbbbbbbbbbbbbbb");
        assert_eq!(auth.anonymous_scopes(), Scopes::NONE);
        let anonymous = auth
            .authenticate(&Credentials::default())
            .expect("anonymous");
        assert!(matches!(
            anonymous.check(Scope::Read, None),
            Err(Denied::Unauthenticated(_))
        ));
        let header = bearer("bbbbbbbbbbbbbbbb");
        let ci = auth
            .authenticate(&Credentials {
                authorization: Some(&header),
                ..Credentials::default()
            })
            .expect("ci");
        assert!(ci.check(Scope::Submit, Some("mail")).is_ok());
        assert!(matches!(
            ci.check(Scope::Submit, Some("other")),
            Err(Denied::PermissionDenied(_))
        ));
        assert!(matches!(
            ci.check(Scope::Admin, Some("mail")),
            Err(Denied::PermissionDenied(_))
        ));
        let wrong = bearer("cccccccccccccccc");
        assert!(matches!(
            auth.authenticate(&Credentials {
                authorization: Some(&wrong),
                ..Credentials::default()
            }),
            Err(Denied::Unauthenticated(_))
        ));
        let ops = bearer("aaaaaaaaaaaaaaaa");
        let ops = auth
            .authenticate(&Credentials {
                authorization: Some(&ops),
                ..Credentials::default()
            })
            .expect("ops");
        assert!(ops.check(Scope::Read, Some("anything")).is_ok());
        assert!(ops.check(Scope::Admin, None).is_ok());
    }

    #[test]
    fn no_tokens_means_open_and_sessions_die_with_their_token() {
        let open = auth("");
        assert_eq!(open.anonymous_scopes(), Scopes::ALL);
        let stray = bearer("left-over-token-from-elsewhere");
        let who = open
            .authenticate(&Credentials {
                authorization: Some(&stray),
                ..Credentials::default()
            })
            .expect("a token sent to an open scheduler is ignored");
        assert!(who.check(Scope::Admin, Some("q")).is_ok());

        let auth = auth("ops:admin:*:aaaaaaaaaaaaaaaa");
        assert!(auth.open_session("nope-nope-nope-nope").is_err());
        let (cookie, who) = auth.open_session("aaaaaaaaaaaaaaaa").expect("session");
        assert_eq!(who.name, "ops");
        assert!(!cookie.contains("aaaa"));
        let by_cookie = |auth: &Auth| {
            auth.authenticate(&Credentials {
                session: Some(&cookie),
                ..Credentials::default()
            })
            .map(|p| p.name.clone())
        };
        assert_eq!(by_cookie(&auth).as_deref(), Ok("ops"));
        auth.close_session(&cookie);
        assert_eq!(by_cookie(&auth).as_deref(), Ok("anonymous"));
        let (cookie2, _) = auth.open_session("aaaaaaaaaaaaaaaa").expect("session");
        assert_eq!(auth.close_sessions_of("ops"), 1);
        assert!(auth.session_principal(&cookie2).is_none());
    }

    #[test]
    fn new_rpcs_need_admin() {
        assert_eq!(rpc_scope("SubmitTask"), Scope::Submit);
        assert_eq!(rpc_scope("WatchTask"), Scope::Read);
        assert_eq!(rpc_scope("PurgeDeadTasks"), Scope::Admin);
        assert_eq!(rpc_scope("SomethingNew"), Scope::Admin);
    }
}
