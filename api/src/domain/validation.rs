//! Input rules that protect the database and the machines Keystone drives. Every function
//! returns the reason a value is refused; the caller attaches the field name.
//!
//! Lengths count characters, as Django's `max_length` and PostgreSQL's `varchar(n)` do.

/// Repository names: what people call them in the UI. Keystone does not use them in paths
/// or commands, but other tools may (a runner's work directory, a log file name), so they
/// are plain words: letters, digits, spaces, `.`, `_` and `-`, starting with a letter or
/// digit, without `..`, slashes or control characters.
pub fn repository_name(name: &str) -> Result<(), String> {
    not_blank(name)?;
    max_chars(name, 120)?;
    no_control_chars(name)?;
    plain_words(name)
}

/// API token names: like repository names, at most 100 characters.
pub fn token_name(name: &str) -> Result<(), String> {
    not_blank(name)?;
    max_chars(name, 100)?;
    no_control_chars(name)?;
    plain_words(name)
}

fn plain_words(name: &str) -> Result<(), String> {
    if !name.chars().next().is_some_and(char::is_alphanumeric) {
        return Err("must start with a letter or digit".into());
    }
    if name.contains("..") {
        return Err("must not contain '..'".into());
    }
    match name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "must contain only letters, digits, spaces, '.', '_' and '-' (found {c:?})"
        )),
        None => Ok(()),
    }
}

/// Which hosts a repository may name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GitHosts {
    /// Loopback and private addresses (`127.0.0.1`, `10.0.0.0/8`, `localhost`, …) too
    /// (`--allow-private-git-hosts`): for a git server on the same machine or network.
    pub allow_private: bool,
}

/// Where a runner clones from. Only remote transports: `https://`, `ssh://`, `git://`, or
/// scp-style `user@host:path`. Refused: `file://` and local paths (they would read the
/// server's own disk), `ext::` and other remote helpers (they run commands), anything
/// starting with `-` (git would read it as an option) — the user and host included —,
/// percent-encoding in the user or host (where it can only hide one), shell syntax (`$`,
/// backquotes, `;`, …) anywhere, link-local and cloud metadata hosts (169.254.0.0/16,
/// fe80::/10), whitespace and control characters; and loopback and private hosts unless
/// `hosts` allows them.
pub fn git_url(url: &str, hosts: GitHosts) -> Result<(), String> {
    not_blank(url)?;
    max_chars(url, 200)?;
    if url.starts_with('-') {
        return Err("must not start with '-' (git would read it as an option)".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    if let Some(c) = url.chars().find(|c| SHELL_CHARS.contains(c)) {
        return Err(format!("must not contain {c:?}"));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return scheme_url(scheme, url, hosts);
    }
    scp_style(url, hosts)
}

fn scheme_url(scheme: &str, url: &str, hosts: GitHosts) -> Result<(), String> {
    if !matches!(scheme, "https" | "ssh" | "git") {
        return Err(format!(
            "the {scheme}:// scheme is not allowed; use https://, ssh://, git:// or user@host:path"
        ));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
    match parsed.host_str() {
        Some(host) if !host.is_empty() && !host.starts_with('-') => {}
        _ => return Err("must name a host".into()),
    }
    if let Some(host) = parsed.host() {
        if let url::Host::Domain(name) = &host
            && !plain_host(name)
        {
            return Err(
                "the host must be a name of letters, digits, '.' and '-', or an address".into(),
            );
        }
        allowed_host(&host, hosts)?;
    }
    // `%2d` is a `-` once git decodes it; user names are plain words.
    let user = parsed.username();
    if !user.is_empty() && !plain_user(user) {
        return Err(
            "the user name must be letters, digits, '.', '_' or '-', not starting with '-'".into(),
        );
    }
    let path = percent_decoded(parsed.path())?;
    if path.split('/').any(|segment| segment.starts_with('-')) {
        return Err("no part of the path may start with '-'".into());
    }
    if parsed.path().trim_matches('/').is_empty() {
        return Err("must name a repository path on the host".into());
    }
    if (scheme == "https" && !parsed.username().is_empty()) || parsed.password().is_some() {
        return Err("must not embed credentials; configure them on the runner".into());
    }
    Ok(())
}

/// `user@host:path`, as git reads it: no `::` (remote helpers such as `ext::`), a host of
/// DNS characters, a path that does not start with `-`.
fn scp_style(url: &str, hosts: GitHosts) -> Result<(), String> {
    const HINT: &str = "must be https://, ssh://, git:// or scp-style user@host:path";
    if url.contains("::") {
        return Err("remote helpers (such as ext::) are not allowed".into());
    }
    let Some((user_host, path)) = url.split_once(':') else {
        return Err(HINT.into());
    };
    let Some((user, host)) = user_host.split_once('@') else {
        return Err(HINT.into());
    };
    if !plain_user(user) || !plain_host(host) {
        return Err(HINT.into());
    }
    if let Ok(host) = url::Host::parse(host) {
        allowed_host(&host, hosts)?;
    }
    if path.is_empty() || path.trim_matches('/').is_empty() {
        return Err("must name a repository path after ':'".into());
    }
    if path.starts_with('-') {
        return Err("the path must not start with '-'".into());
    }
    Ok(())
}

/// Characters of shell syntax: never needed in a repository URL, and dangerous wherever a
/// URL meets a shell (a hook, a wrapper script, a log viewed in a terminal).
const SHELL_CHARS: &[char] = &[
    '$', '`', ';', '|', '&', '<', '>', '\\', '"', '\'', '(', ')', '{', '}', '*', '?', '!', '^',
];

/// A host name as DNS has them (or an address in brackets): never `%`, never a leading `-`.
fn plain_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    !bare.is_empty()
        && !bare.starts_with('-')
        && (bare.parse::<std::net::IpAddr>().is_ok()
            || bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')))
}

/// A user name in a URL: letters, digits, `.`, `_`, `-`, not starting with `-`.
fn plain_user(user: &str) -> bool {
    !user.is_empty()
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `path` with `%XX` decoded; refused when that yields control characters or bytes that
/// are not UTF-8 (an encoded newline or NUL is never a real repository path).
fn percent_decoded(path: &str) -> Result<String, String> {
    let refused = || "the path must not encode control characters or invalid UTF-8".to_owned();
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| refused())?;
    if decoded.chars().any(char::is_control) {
        return Err(refused());
    }
    Ok(decoded.into_owned())
}

/// Hosts a runner must never be pointed at: link-local addresses (cloud metadata services
/// answer at 169.254.169.254 and fe80::/10), the unspecified address, and the metadata
/// services' names; and, unless `hosts` allows them, loopback and private addresses and
/// `localhost` (the runner's own machine and network).
fn allowed_host<S: AsRef<str>>(host: &url::Host<S>, hosts: GitHosts) -> Result<(), String> {
    use std::net::IpAddr;
    let address = match host {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
        // `ssh://` and `git://` hosts are opaque to the URL parser: an address stays text.
        url::Host::Domain(name) => name
            .as_ref()
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .ok(),
    };
    let address = address.map(|ip| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    });
    let (metadata, private) = match (address, host) {
        (Some(IpAddr::V4(ip)), _) => (
            ip.is_link_local() || ip.is_unspecified(),
            ip.is_loopback()
                || ip.is_private()
                // 100.64.0.0/10, carrier-grade NAT: another machine's private network.
                || (ip.octets()[0] == 100 && ip.octets()[1] & 0xc0 == 64),
        ),
        (Some(IpAddr::V6(ip)), _) => (
            ip.is_unicast_link_local() || ip.is_unspecified(),
            ip.is_loopback() || ip.is_unique_local(),
        ),
        (None, url::Host::Domain(name)) => {
            let name = name.as_ref().trim_end_matches('.').to_ascii_lowercase();
            (
                name == "metadata" || name == "metadata.google.internal",
                name == "localhost" || name.ends_with(".localhost"),
            )
        }
        (None, _) => (false, false),
    };
    if metadata {
        return Err("link-local and cloud metadata hosts are not allowed".into());
    }
    if private && !hosts.allow_private {
        return Err(
            "loopback and private hosts are not allowed (a server started with \
                    --allow-private-git-hosts accepts them)"
                .into(),
        );
    }
    Ok(())
}

/// A branch name valid by `git check-ref-format --branch`.
pub fn branch_name(branch: &str) -> Result<(), String> {
    not_blank(branch)?;
    max_chars(branch, 120)?;
    let refuse = |why: &str| Err(format!("not a valid git branch name: {why}"));
    if branch.starts_with('-') {
        return refuse("must not start with '-'");
    }
    if branch == "@" || branch == "HEAD" {
        return refuse("must not be '@' or 'HEAD'");
    }
    // Stricter than git: shell syntax (`$(id)`), quotes and non-ASCII never reach a command
    // line or a log as a branch.
    if let Some(c) = branch
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '+' | '@')))
    {
        return refuse(&format!(
            "must contain only letters, digits, '.', '_', '-', '/', '+' and '@' (found {c:?})"
        ));
    }
    if branch.contains("..") || branch.contains("@{") || branch.contains("//") {
        return refuse("must not contain '..', '@{' or '//'");
    }
    if branch.starts_with('/') || branch.ends_with('/') || branch.ends_with('.') {
        return refuse("must not start or end with '/' or end with '.'");
    }
    for component in branch.split('/') {
        if component.starts_with('.') || component.ends_with(".lock") {
            return refuse("no part may start with '.' or end with '.lock'");
        }
    }
    Ok(())
}

/// App names become container names, directories and host names: a DNS label.
pub fn app_name(name: &str) -> Result<(), String> {
    not_blank(name)?;
    const RULE: &str = "must be a DNS label: 1 to 63 lowercase letters, digits and hyphens, \
                        starting and ending with a letter or digit";
    let bytes = name.as_bytes();
    let valid = bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-');
    if valid { Ok(()) } else { Err(RULE.into()) }
}

/// Image references a runner reports (`keystone/web:12-abc1234`, `registry:5000/a/b@sha256:…`),
/// by the grammar of Docker's distribution references: `[domain[:port]/]path[:tag][@digest]`,
/// lowercase path components, at most 200 characters (the column). Empty: no image.
pub fn image_reference(reference: &str) -> Result<(), String> {
    if reference.is_empty() {
        return Ok(());
    }
    max_chars(reference, 200)?;
    const RULE: &str = "must be an image reference: [registry[:port]/]name[:tag][@algorithm:hex]";
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let valid = digest.split_once(':').is_some_and(|(algorithm, hex)| {
            !algorithm.is_empty()
                && algorithm
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c))
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !valid {
            return Err(RULE.into());
        }
    }
    // A tag follows the last ':' after the last '/'.
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(RULE.into());
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // The first component is a registry when it looks like a host (has '.' or ':', or is
    // `localhost`).
    if components.len() > 1 && (components[0].contains(['.', ':']) || components[0] == "localhost")
    {
        let domain = components.remove(0);
        let (host, port) = match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        };
        let host_ok = host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if !host_ok || !port_ok {
            return Err(RULE.into());
        }
    }
    let component_ok = |component: &str| {
        let bytes = component.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        !bytes.is_empty()
            && bytes.first().is_some_and(alnum)
            && bytes.last().is_some_and(alnum)
            && bytes
                .iter()
                .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
            && !component.contains("..")
    };
    if components.is_empty() || !components.into_iter().all(component_ok) {
        return Err(RULE.into());
    }
    Ok(())
}

/// Config var names: POSIX (`[A-Za-z_][A-Za-z0-9_]*`), at most 128 characters; `PORT` is the
/// runner's to set.
pub fn env_name(name: &str) -> Result<(), String> {
    not_blank(name)?;
    max_chars(name, 128)?;
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(
            "must be a POSIX name: letters, digits and '_', not starting with a digit".into(),
        );
    }
    if name == "PORT" {
        return Err("PORT is set by the runner (the port the app listens on)".into());
    }
    Ok(())
}

/// Config var values: at most 32 KiB, no NUL (an environment cannot hold one).
pub fn env_value(value: &str) -> Result<(), String> {
    if value.len() > 32 * 1024 {
        return Err(format!("must be at most 32768 bytes (got {})", value.len()));
    }
    if value.contains('\0') {
        return Err("must not contain NUL".into());
    }
    Ok(())
}

/// The host name a runner advertises for its apps: a DNS name or an IP address, at most
/// 255 characters.
pub fn public_host(host: &str) -> Result<(), String> {
    not_blank(host)?;
    max_chars(host, 255)?;
    let valid = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        && !host.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err("must be a host name or an IP address".into())
    }
}

/// What the runner's health check requests: a path starting with `/` (a query allowed), at
/// most 200 characters, or empty for no HTTP check.
pub fn health_check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    max_chars(path, 200)?;
    if !path.starts_with('/') {
        return Err("must start with '/' (or be empty: no HTTP check)".into());
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    Ok(())
}

/// A commit a runner built: 40 lowercase hex digits (a SHA-1 object name).
pub fn commit_sha(sha: &str) -> Result<(), String> {
    if sha.len() == 40
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err("must be 40 lowercase hexadecimal digits".into())
    }
}

/// What a runner reports went wrong: at most 4,000 characters (control characters other
/// than newlines and tabs are stored escaped).
pub fn error_summary(summary: &str) -> Result<(), String> {
    max_chars(summary, super::runs::MAX_ERROR_SUMMARY)
}

fn not_blank(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(())
    }
}

fn max_chars(value: &str, max: usize) -> Result<(), String> {
    let len = value.chars().count();
    if len > max {
        Err(format!("must be at most {max} characters (got {len})"))
    } else {
        Ok(())
    }
}

fn no_control_chars(value: &str) -> Result<(), String> {
    if value.chars().any(char::is_control) {
        Err("must not contain control characters".into())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls() {
        for ok in [
            "https://github.com/acme/web.git",
            "ssh://git@github.com:22/acme/web.git",
            "git://example.org/web",
            "git@github.com:acme/web.git",
            "deploy@git.internal:web",
        ] {
            assert_eq!(git_url(ok, GitHosts::default()), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "file:///etc/passwd",
            "/srv/repos/web",
            "../web",
            "--upload-pack=touch /tmp/pwned",
            "-oProxyCommand=x",
            "ext::sh -c touch% /tmp/pwned",
            "ext::sh",
            "http://example.com/web.git",
            "https://",
            "https://example.com",
            "https://user:secret@example.com/web.git",
            "git@github.com:-oProxyCommand",
            "git@-host:web",
            "github.com:acme/web",
            "https://example.com/web.git\0",
            "https://example.com/we b.git",
            "ssh://-oProxyCommand=touch%20pwned@host/repo",
            "ssh://%2doProxyCommand=x@host/repo",
            "ssh://git@host/%2d-upload-pack",
            "ssh://git@host/-repo",
            "https://example.com/$(touch pwned).git",
            "https://example.com/`id`.git",
            "git@host:repo;id",
            "https://example.com/a%0aX.git",
            "http://169.254.169.254/latest/meta-data",
            "https://169.254.169.254/x.git",
            "git://[fe80::1]/x.git",
            "ssh://git@169.254.1.1/x.git",
            "git@169.254.169.254:x.git",
            "https://metadata.google.internal/x.git",
            "ssh://git@%2doProxyCommand=x/repo",
            "ssh://%2D%2Dupload-pack=x@host/repo",
            "git://%2dx/repo",
            "git@%2dhost:repo",
        ] {
            let allowed = GitHosts {
                allow_private: true,
            };
            assert!(git_url(bad, allowed).is_err(), "{bad:?} was accepted");
        }
        assert!(
            git_url(
                &format!("https://example.com/{}", "a".repeat(200)),
                GitHosts::default()
            )
            .is_err()
        );
    }

    #[test]
    fn private_git_hosts_need_the_setting() {
        for private in [
            "git://127.0.0.1:9418/app.git",
            "https://localhost/x.git",
            "https://build.localhost/x.git",
            "ssh://git@10.1.2.3/x.git",
            "git@192.168.1.10:x.git",
            "git://[::1]/x.git",
            "https://[fd00::1]/x.git",
            "https://172.16.0.1/x.git",
            "https://100.64.0.1/x.git",
            "git://[::ffff:127.0.0.1]/x.git",
        ] {
            assert!(git_url(private, GitHosts::default()).is_err(), "{private}");
            let allowed = GitHosts {
                allow_private: true,
            };
            assert_eq!(git_url(private, allowed), Ok(()), "{private}");
        }
    }

    #[test]
    fn image_references() {
        for ok in [
            "",
            "web",
            "keystone/web:12-abc1234",
            "localhost:5000/a/b:latest",
            "registry.example.com/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "a_b/c-d.e",
        ] {
            assert_eq!(image_reference(ok), Ok(()), "{ok}");
        }
        for bad in [
            "--privileged",
            "-v/:/host",
            "Web",
            "web:",
            "web:-x",
            "web@sha256:short",
            "a//b",
            "web:latest; rm -rf /",
            "web\nx",
            &"a".repeat(201),
        ] {
            assert!(image_reference(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn branches() {
        for ok in ["main", "release/1.2", "feature/x-y_z", "v1.0"] {
            assert_eq!(branch_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "-x", "@", "a..b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b", "/a", "a/",
            "a.", "a//b", ".hidden", "a/.b", "x.lock", "a@{1}", "a\u{7f}", "$(id)", "HEAD", "..",
            "a\"b", "a'b", "é",
        ] {
            assert!(branch_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn app_names() {
        for ok in ["web", "a", "web-2", &"a".repeat(63)] {
            assert_eq!(app_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-web",
            "web-",
            "Web",
            "web_app",
            "web.app",
            "../x",
            "a/b",
            &"a".repeat(64),
        ] {
            assert!(app_name(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
