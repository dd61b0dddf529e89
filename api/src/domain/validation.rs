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

/// Where a runner clones from. Only remote transports: `https://`, `ssh://`, `git://`, or
/// scp-style `user@host:path`. Refused: `file://` and local paths (they would read the
/// server's own disk), `ext::` and other remote helpers (they run commands), anything
/// starting with `-` (git would read it as an option), whitespace and control characters.
pub fn git_url(url: &str) -> Result<(), String> {
    not_blank(url)?;
    max_chars(url, 200)?;
    if url.starts_with('-') {
        return Err("must not start with '-' (git would read it as an option)".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return scheme_url(scheme, url);
    }
    scp_style(url)
}

fn scheme_url(scheme: &str, url: &str) -> Result<(), String> {
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
fn scp_style(url: &str) -> Result<(), String> {
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
    let user_ok = !user.is_empty()
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let host_ok = !host.is_empty()
        && !host.starts_with('-')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
    if !user_ok || !host_ok {
        return Err(HINT.into());
    }
    if path.is_empty() || path.trim_matches('/').is_empty() {
        return Err("must name a repository path after ':'".into());
    }
    if path.starts_with('-') {
        return Err("the path must not start with '-'".into());
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
    if branch == "@" {
        return refuse("must not be '@'");
    }
    if let Some(c) = branch.chars().find(|c| {
        c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    }) {
        return refuse(&format!("must not contain {c:?}"));
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

/// Image tags a runner reports: at most 200 characters (the column), no whitespace or
/// control characters.
pub fn image_tag(tag: &str) -> Result<(), String> {
    max_chars(tag, 200)?;
    if tag.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    Ok(())
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
            assert_eq!(git_url(ok), Ok(()), "{ok}");
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
        ] {
            assert!(git_url(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(git_url(&format!("https://example.com/{}", "a".repeat(200))).is_err());
    }

    #[test]
    fn branches() {
        for ok in ["main", "release/1.2", "feature/x-y_z", "v1.0"] {
            assert_eq!(branch_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "-x", "@", "a..b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b", "/a", "a/",
            "a.", "a//b", ".hidden", "a/.b", "x.lock", "a@{1}", "a\u{7f}",
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
