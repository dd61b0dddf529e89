//! The repository's `Procfile` (Heroku and Piku conventions): `name: command` per line.
//! `web` is the process that serves (a stack Keystone builds may supply one, see
//! [`super::buildpack`]); `release` runs before traffic moves (its failure leaves traffic
//! untouched); `build` is a Keystone extension that runs once per release, after the stack's
//! build and before `release`. Other entries are ignored.

/// The commands Keystone runs.
#[derive(Debug, PartialEq, Eq)]
pub struct Procfile {
    pub web: Option<String>,
    pub release: Option<String>,
    pub build: Option<String>,
}

/// The largest Procfile read.
pub const MAX_BYTES: u64 = 64 * 1024;

pub fn parse(text: &str) -> Result<Procfile, String> {
    let (mut web, mut release, mut build) = (None, None, None);
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, command)) = line.split_once(':') else {
            return Err(format!(
                "Procfile line {}: expected `name: command`",
                number + 1
            ));
        };
        let command = command.trim();
        if command.is_empty() {
            return Err(format!(
                "Procfile line {}: `{}` has no command",
                number + 1,
                name.trim()
            ));
        }
        let slot = match name.trim() {
            "web" => &mut web,
            "release" => &mut release,
            "build" => &mut build,
            _ => continue,
        };
        if slot.is_some() {
            return Err(format!(
                "Procfile line {}: `{}` is defined twice",
                number + 1,
                name.trim()
            ));
        }
        *slot = Some(command.to_owned());
    }
    Ok(Procfile {
        web,
        release,
        build,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        let procfile =
            parse("# app\nweb: python3 app.py\nrelease: ./migrate\nworker: x\nbuild: make\n")
                .unwrap();
        assert_eq!(procfile.web.as_deref(), Some("python3 app.py"));
        assert_eq!(procfile.release.as_deref(), Some("./migrate"));
        assert_eq!(procfile.build.as_deref(), Some("make"));
        assert_eq!(parse("worker: x\n").unwrap().web, None);
        assert!(parse("web x\n").is_err());
        assert!(parse("web: a\nweb: b\n").unwrap_err().contains("twice"));
    }
}
