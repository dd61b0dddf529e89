//! Python apps: a repository with `requirements.txt`, `Pipfile.lock` or a pip-installable
//! `pyproject.toml`.
//!
//! - **Interpreter**: `.python-version` (`3.11`, `3.11.7`) or `runtime.txt` (`python-3.11.7`)
//!   name the version; it must be installed on the host (`python3.11` on `PATH`, or a
//!   `python3` of that version), else the build fails naming what is installed. Without
//!   either: `python3`.
//! - **Packages**: into a virtualenv in the release, `.venv`, built where it runs. Wheels of
//!   the requirements are kept per app and per exact requirements and interpreter
//!   (`<cache>/wheels/<digest>`, the three most recent); pip's download cache is kept per app
//!   (`<cache>/pip`): a redeploy whose requirements did not change installs from local wheels
//!   without contacting the index. (A `pyproject.toml` project is installed by pip with its
//!   download cache: the project itself changes with every commit.)
//! - **Django**: `manage.py collectstatic --noinput` when the app has a `manage.py` and sets
//!   `STATIC_ROOT`; skipped, saying so, otherwise. Without a Procfile, a Django app with
//!   gunicorn installed is served by `gunicorn <project>.wsgi`.
//! - The app's processes get the virtualenv's `bin` first on `PATH`, `VIRTUAL_ENV` and
//!   `PYTHONUNBUFFERED=1` (output reaches the log as it is printed).

use std::path::{Path, PathBuf};

use super::{Build, BuildPlan, digest, keep_recent, read_small};
use crate::runner::steps::StepError;

/// What the app declares its dependencies with.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirements {
    /// `requirements.txt`, as written.
    File(String),
    /// `Pipfile.lock`'s default packages, pinned (as `requirements` lines).
    Pipfile(String),
    /// A `pyproject.toml` project: `pip install .`.
    Project,
}

/// A Python app found in a release.
#[derive(Debug)]
pub struct Python {
    requirements: Requirements,
    /// The version asked for, and where.
    wanted: Option<(String, &'static str)>,
}

/// `Some` when `release` holds a Python app; `Err` when its files are unreadable.
pub fn detect(release: &Path) -> Result<Option<Python>, String> {
    let requirements = if let Some(text) = read_small(&release.join("requirements.txt"), 1 << 20) {
        Requirements::File(text)
    } else if let Some(text) = read_small(&release.join("Pipfile.lock"), 4 << 20) {
        Requirements::Pipfile(pipfile_requirements(&text)?)
    } else if read_small(&release.join("pyproject.toml"), 1 << 20)
        .is_some_and(|text| text.contains("[project]") || text.contains("[build-system]"))
    {
        Requirements::Project
    } else {
        return Ok(None);
    };
    Ok(Some(Python {
        requirements,
        wanted: wanted_version(release),
    }))
}

/// `Pipfile.lock`'s `default` packages as pinned requirement lines.
fn pipfile_requirements(lock: &str) -> Result<String, String> {
    let lock: serde_json::Value =
        serde_json::from_str(lock).map_err(|e| format!("Pipfile.lock is not JSON: {e}"))?;
    let packages = lock["default"]
        .as_object()
        .ok_or("Pipfile.lock has no \"default\" packages")?;
    let mut lines = Vec::with_capacity(packages.len());
    for (name, package) in packages {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(format!("Pipfile.lock names an odd package {name:?}"));
        }
        let pin = package["version"].as_str().unwrap_or_default();
        let pin_valid = pin.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '=' | '.' | '*' | '+' | '!' | '<' | '>' | '~' | ',')
        });
        if !pin_valid {
            return Err(format!("Pipfile.lock pins {name} oddly: {pin:?}"));
        }
        let pin = if pin == "*" { "" } else { pin };
        lines.push(format!("{name}{pin}"));
    }
    lines.sort();
    Ok(lines.join("\n") + "\n")
}

/// The version the release asks for: `.python-version`, else `runtime.txt`.
fn wanted_version(release: &Path) -> Option<(String, &'static str)> {
    let first_line = |name: &str| {
        read_small(&release.join(name), 4096)?
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_owned)
    };
    if let Some(version) = first_line(".python-version") {
        return Some((version, ".python-version"));
    }
    let runtime = first_line("runtime.txt")?;
    Some((
        runtime
            .strip_prefix("python-")
            .unwrap_or(&runtime)
            .to_owned(),
        "runtime.txt",
    ))
}

/// Whether `installed` (`3.11.7`) is what `wanted` (`3.11`, `3.11.7`, `3`) asks for.
fn version_matches(wanted: &str, installed: &str) -> bool {
    let wanted: Vec<&str> = wanted.split('.').collect();
    let installed: Vec<&str> = installed.split('.').collect();
    wanted.len() <= installed.len() && wanted.iter().zip(&installed).all(|(w, i)| w == i)
}

/// The Python interpreters on `PATH` (`python3`, `python3.X`) and their versions.
async fn installed() -> Vec<(PathBuf, String)> {
    let mut found: Vec<(PathBuf, String)> = Vec::new();
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_interpreter = name == "python3"
                || name.strip_prefix("python3.").is_some_and(|minor| {
                    !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit())
                });
            if !is_interpreter
                || found
                    .iter()
                    .any(|(p, _)| p.file_name() == Some(entry.file_name().as_os_str()))
            {
                continue;
            }
            if let Some(version) = version_of(&entry.path()).await {
                found.push((entry.path(), version));
            }
        }
    }
    found
}

/// `3.11.7` for an interpreter that says `Python 3.11.7`.
async fn version_of(interpreter: &Path) -> Option<String> {
    let output = tokio::process::Command::new(interpreter)
        .arg("--version")
        .env_clear()
        .envs(
            crate::runner::runtime::INHERITED_ENV
                .iter()
                .filter_map(|name| Some((*name, std::env::var_os(name)?))),
        )
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    text.trim().strip_prefix("Python ").map(str::to_owned)
}

/// The interpreter for `wanted` (`None`: `python3`), or why there is none.
async fn interpreter(wanted: Option<&(String, &'static str)>) -> Result<(PathBuf, String), String> {
    let installed = installed().await;
    let pick = match wanted {
        None => installed.iter().find(|(path, _)| path.ends_with("python3")),
        Some((version, _)) => installed
            .iter()
            .find(|(_, installed)| version_matches(version, installed)),
    };
    if let Some((path, version)) = pick {
        return Ok((path.clone(), version.clone()));
    }
    let mut names: Vec<String> = installed
        .iter()
        .map(|(path, version)| format!("{version} ({})", path.display()))
        .collect();
    names.dedup();
    let have = if names.is_empty() {
        "no Python 3 at all".to_owned()
    } else {
        names.join(", ")
    };
    Err(match wanted {
        Some((version, file)) => format!(
            "{file} asks for Python {version}, which this host does not have; it has {have}. \
             Install it on the runner's host, or change {file}"
        ),
        None => format!("this host has no python3 on PATH ({have})"),
    })
}

impl Python {
    pub async fn build(
        &self,
        build: &mut Build<'_, '_>,
        plan: &mut BuildPlan,
    ) -> Result<(), StepError> {
        let (python, version) = interpreter(self.wanted.as_ref())
            .await
            .map_err(StepError::Failed)?;
        build
            .say(format!("       Python {version} ({})", python.display()))
            .await;
        let python = python.to_string_lossy().into_owned();
        let venv = build.release.join(".venv");
        let pip_cache = build.cache.join("pip");
        let pip_cache_arg = pip_cache.to_string_lossy().into_owned();
        let venv_python = venv
            .join("bin")
            .join("python")
            .to_string_lossy()
            .into_owned();
        let quiet = [
            ("PIP_DISABLE_PIP_VERSION_CHECK", "1".to_owned()),
            ("PIP_NO_INPUT", "1".to_owned()),
        ];
        let command = build.command(
            &python,
            &["-m", "venv", "--without-pip", ".venv"],
            plan,
            &quiet,
        );
        build.run(command).await?;
        match &self.requirements {
            Requirements::File(text) | Requirements::Pipfile(text) => {
                let file = build.release.join(".keystone").join("requirements.txt");
                std::fs::create_dir_all(file.parent().expect("a parent"))
                    .and_then(|()| std::fs::write(&file, text))
                    .map_err(|e| {
                        StepError::Failed(format!("cannot write the requirements: {e}"))
                    })?;
                let file = file.to_string_lossy().into_owned();
                let wheels_root = build.cache.join("wheels");
                let wheels = wheels_root.join(digest(&[version.as_bytes(), text.as_bytes()]));
                if wheels.is_dir() {
                    build
                        .say(
                            "       dependencies unchanged: installing from this app's wheel cache",
                        )
                        .await;
                    // Marks it recently used.
                    let _ = filetime_touch(&wheels);
                } else {
                    build
                        .say("       downloading and building dependencies")
                        .await;
                    let draft = wheels_root.join(format!(".draft-{}", std::process::id()));
                    let _ = std::fs::remove_dir_all(&draft);
                    let draft_arg = draft.to_string_lossy().into_owned();
                    let command = build.command(
                        &python,
                        &[
                            "-m",
                            "pip",
                            "wheel",
                            "--quiet",
                            "--cache-dir",
                            &pip_cache_arg,
                            "--wheel-dir",
                            &draft_arg,
                            "-r",
                            &file,
                        ],
                        plan,
                        &quiet,
                    );
                    build.run(command).await?;
                    std::fs::rename(&draft, &wheels)
                        .map_err(|e| StepError::Failed(format!("cannot keep the wheels: {e}")))?;
                    keep_recent(&wheels_root, 3);
                }
                let wheels_arg = wheels.to_string_lossy().into_owned();
                let command = build.command(
                    &python,
                    &[
                        "-m",
                        "pip",
                        "--python",
                        &venv_python,
                        "install",
                        "--quiet",
                        "--no-index",
                        "--find-links",
                        &wheels_arg,
                        "-r",
                        &file,
                    ],
                    plan,
                    &quiet,
                );
                build.run(command).await?;
            }
            Requirements::Project => {
                build
                    .say("       installing the project (pyproject.toml)")
                    .await;
                let command = build.command(
                    &python,
                    &[
                        "-m",
                        "pip",
                        "--python",
                        &venv_python,
                        "install",
                        "--quiet",
                        "--cache-dir",
                        &pip_cache_arg,
                        ".",
                    ],
                    plan,
                    &quiet,
                );
                build.run(command).await?;
            }
        }
        plan.path.insert(0, venv.join("bin"));
        plan.env.push((
            "VIRTUAL_ENV".to_owned(),
            venv.to_string_lossy().into_owned(),
        ));
        plan.env
            .push(("PYTHONUNBUFFERED".to_owned(), "1".to_owned()));
        self.django(build, plan, &venv_python).await
    }

    /// `collectstatic` when the app is a Django project with a `STATIC_ROOT`; a default
    /// `web` when gunicorn is installed.
    async fn django(
        &self,
        build: &mut Build<'_, '_>,
        plan: &mut BuildPlan,
        venv_python: &str,
    ) -> Result<(), StepError> {
        if !build.release.join("manage.py").is_file() {
            return Ok(());
        }
        let settings = find_settings(build.release);
        let static_root = settings
            .iter()
            .any(|file| read_small(file, 1 << 20).is_some_and(|text| text.contains("STATIC_ROOT")));
        if static_root {
            build.say("-----> Django: collectstatic").await;
            let command = build.command(
                venv_python,
                &["manage.py", "collectstatic", "--noinput"],
                plan,
                &[],
            );
            build.run(command).await?;
        } else {
            build
                .say("-----> Django: no STATIC_ROOT in its settings; collectstatic skipped")
                .await;
        }
        let project = settings
            .iter()
            .filter_map(|file| file.parent())
            .find(|dir| dir.join("wsgi.py").is_file())
            .and_then(|dir| dir.file_name())
            .map(|name| name.to_string_lossy().into_owned());
        if let Some(project) = project
            && build.release.join(".venv/bin/gunicorn").is_file()
        {
            plan.web = Some(format!("gunicorn {project}.wsgi"));
        }
        Ok(())
    }
}

/// Django settings modules: `settings.py` files (or `settings/` packages) one level down.
fn find_settings(release: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(release) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten().filter(|e| e.path().is_dir()) {
        let module = entry.path().join("settings.py");
        if module.is_file() {
            found.push(module);
        }
        if let Ok(package) = std::fs::read_dir(entry.path().join("settings")) {
            found.extend(
                package
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "py")),
            );
        }
    }
    found.sort();
    found
}

/// Sets `path`'s modification time to now (what "recently used" is measured by).
fn filetime_touch(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.set_modified(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_dependency_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(detect(dir.path()).unwrap().is_none());
        std::fs::write(dir.path().join("pyproject.toml"), "[tool.black]\n").unwrap();
        assert!(detect(dir.path()).unwrap().is_none(), "not pip-installable");
        std::fs::write(
            dir.path().join("pyproject.toml"),
            "[project]\nname = \"x\"\n",
        )
        .unwrap();
        assert_eq!(
            detect(dir.path()).unwrap().unwrap().requirements,
            Requirements::Project
        );
        std::fs::write(
            dir.path().join("Pipfile.lock"),
            r#"{"default": {"flask": {"version": "==3.0.0"}, "gunicorn": {"version": "==21.2.0"}}}"#,
        )
        .unwrap();
        assert_eq!(
            detect(dir.path()).unwrap().unwrap().requirements,
            Requirements::Pipfile("flask==3.0.0\ngunicorn==21.2.0\n".to_owned())
        );
        std::fs::write(dir.path().join("requirements.txt"), "flask\n").unwrap();
        std::fs::write(dir.path().join("runtime.txt"), "python-3.11.7\n").unwrap();
        let python = detect(dir.path()).unwrap().unwrap();
        assert_eq!(
            python.requirements,
            Requirements::File("flask\n".to_owned())
        );
        assert_eq!(python.wanted, Some(("3.11.7".to_owned(), "runtime.txt")));
        std::fs::write(dir.path().join(".python-version"), "3.12\n").unwrap();
        assert_eq!(
            detect(dir.path()).unwrap().unwrap().wanted,
            Some(("3.12".to_owned(), ".python-version"))
        );
        std::fs::write(
            dir.path().join("Pipfile.lock"),
            r#"{"default": {"x; rm -rf /": {}}}"#,
        )
        .unwrap();
        std::fs::remove_file(dir.path().join("requirements.txt")).unwrap();
        assert!(detect(dir.path()).is_err());
    }

    #[test]
    fn versions_match_by_their_leading_parts() {
        assert!(version_matches("3.11", "3.11.7"));
        assert!(version_matches("3.11.7", "3.11.7"));
        assert!(version_matches("3", "3.11.7"));
        assert!(!version_matches("3.1", "3.11.7"));
        assert!(!version_matches("3.12", "3.11.7"));
        assert!(!version_matches("3.11.7.1", "3.11.7"));
    }

    #[tokio::test]
    async fn a_missing_interpreter_is_named_with_what_is_installed() {
        let error = interpreter(Some(&("2.6".to_owned(), ".python-version")))
            .await
            .unwrap_err();
        assert!(
            error.contains(".python-version asks for Python 2.6"),
            "{error}"
        );
        assert!(error.contains("it has"), "{error}");
    }
}
