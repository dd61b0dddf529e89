//! Static sites: an `index.html` at the repository's root, or in `public/`, and no other
//! stack. Keystone serves them itself (`keystone static`, a static file server on `$PORT`),
//! so a site needs no Procfile and no web server of its own.

use std::path::{Path, PathBuf};

use super::BuildPlan;

/// A static site found in a release.
#[derive(Debug)]
pub struct StaticSite {
    root: PathBuf,
}

pub fn detect(release: &Path) -> Option<StaticSite> {
    ["", "public"]
        .iter()
        .map(|dir| release.join(dir))
        .find(|dir| dir.join("index.html").is_file())
        .map(|root| StaticSite { root })
}

impl StaticSite {
    /// The directory served, as the log names it.
    pub fn root_name(&self) -> String {
        match self.root.file_name() {
            Some(name) if name == "public" => "public/".to_owned(),
            _ => "the repository's root".to_owned(),
        }
    }

    /// Serving needs this binary (`keystone static DIR`, on `$PORT`).
    pub fn plan(&self, plan: &mut BuildPlan) -> Result<(), String> {
        let keystone = std::env::current_exe()
            .map_err(|e| format!("cannot find the keystone binary to serve the site: {e}"))?;
        let quote = |path: &Path| format!("'{}'", path.to_string_lossy().replace('\'', "'\\''"));
        plan.web = Some(format!(
            "exec {} static {}",
            quote(&keystone),
            quote(&self.root)
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_at_the_root_or_in_public() {
        let dir = tempfile::tempdir().unwrap();
        assert!(detect(dir.path()).is_none());
        std::fs::create_dir(dir.path().join("public")).unwrap();
        std::fs::write(dir.path().join("public/index.html"), "<h1>hi</h1>").unwrap();
        let site = detect(dir.path()).unwrap();
        assert_eq!(site.root_name(), "public/");
        std::fs::write(dir.path().join("index.html"), "<h1>hi</h1>").unwrap();
        assert_eq!(
            detect(dir.path()).unwrap().root_name(),
            "the repository's root"
        );
        let mut plan = BuildPlan::default();
        site.plan(&mut plan).unwrap();
        assert!(plan.web.unwrap().contains(" static '"));
    }
}
