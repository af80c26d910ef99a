//! The stock Debian kernels the VM boots: a release (5.10 from bullseye, 6.1 from bookworm,
//! 6.12 from trixie) in a flavour (cloud or generic), for x86_64 (amd64); and bookworm's 6.1
//! for arm64 ([`Release::arm64`]: under TCG an arm64 guest is several times slower, so the
//! matrix boots the release Debian's stable ships, not all three).

use std::fmt;

use anyhow::{Result, bail};

pub use crate::arch::Arch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    V5_10,
    V6_1,
    V6_12,
}

impl Release {
    pub const ALL: [Release; 3] = [Release::V5_10, Release::V6_1, Release::V6_12];

    pub fn name(self) -> &'static str {
        match self {
            Release::V5_10 => "5.10",
            Release::V6_1 => "6.1",
            Release::V6_12 => "6.12",
        }
    }

    /// The Debian suite that ships it.
    pub fn suite(self) -> &'static str {
        match self {
            Release::V5_10 => "bullseye",
            Release::V6_1 => "bookworm",
            Release::V6_12 => "trixie",
        }
    }

    /// Whether the matrix boots this release on arm64 (bookworm's 6.1 only).
    pub fn arm64(self) -> bool {
        self == Release::V6_1
    }

    /// What every image package's name starts with; the build (ABI) follows:
    /// `linux-image-5.10.0-46-cloud-amd64-unsigned`, `linux-image-6.12.118+deb13-amd64-unsigned`,
    /// `linux-image-6.1.0-50-cloud-arm64-unsigned`.
    pub fn prefix(self) -> &'static str {
        match self {
            Release::V5_10 => "linux-image-5.10.0-",
            Release::V6_1 => "linux-image-6.1.0-",
            Release::V6_12 => "linux-image-6.12.",
        }
    }

    /// The build number of an image package of this release and `flavour`, or None when the
    /// name is another package (another flavour, `-rt-`, a meta package).
    pub fn build_of(self, package: &str, flavour: Flavour, arch: Arch) -> Option<u32> {
        let suffix = format!("-{}{}-unsigned", flavour.infix(), arch.debian());
        let build = package.strip_prefix(self.prefix())?.strip_suffix(&suffix)?;
        // 6.12 builds read "118+deb13" (trixie's own) or "118+deb12" (bookworm's backport,
        // not this release's suite); digits only also leaves "-cloud-" out of generic.
        let digits = match build.split_once('+') {
            // "118+deb13-cloud" is the cloud build, not a generic one.
            Some((n, tag))
                if self == Release::V6_12 && tag.starts_with("deb13") && !tag.contains('-') =>
            {
                n
            }
            Some(_) => return None,
            None => build,
        };
        digits.parse().ok()
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Cloud,
    Generic,
}

impl Flavour {
    pub const ALL: [Flavour; 2] = [Flavour::Cloud, Flavour::Generic];

    pub fn name(self) -> &'static str {
        match self {
            Flavour::Cloud => "cloud",
            Flavour::Generic => "generic",
        }
    }

    /// In package names: `…-cloud-amd64-unsigned`, `…-amd64-unsigned`.
    pub fn infix(self) -> &'static str {
        match self {
            Flavour::Cloud => "cloud-",
            Flavour::Generic => "",
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One kernel to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    pub release: Release,
    pub flavour: Flavour,
    pub arch: Arch,
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.release, self.flavour, self.arch)
    }
}

/// `--kernel 5.10|6.1|6.12|all` (repeatable).
pub fn parse_releases(args: &[String]) -> Result<Vec<Release>> {
    let mut out = Vec::new();
    for a in args {
        let add: Vec<Release> = match a.as_str() {
            "all" => Release::ALL.to_vec(),
            name => match Release::ALL.into_iter().find(|r| r.name() == name) {
                Some(r) => vec![r],
                None => bail!("--kernel {name}: not one of 5.10, 6.1, 6.12, all"),
            },
        };
        for r in add {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// `--flavour cloud|generic|all` (repeatable).
pub fn parse_flavours(args: &[String]) -> Result<Vec<Flavour>> {
    let mut out = Vec::new();
    for a in args {
        let add: Vec<Flavour> = match a.as_str() {
            "all" => Flavour::ALL.to_vec(),
            name => match Flavour::ALL.into_iter().find(|f| f.name() == name) {
                Some(f) => vec![f],
                None => bail!("--flavour {name}: not one of cloud, generic, all"),
            },
        };
        for f in add {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// Every release in every flavour asked for, for each architecture (arm64: the releases
/// [`Release::arm64`] allows); architectures first, then releases.
pub fn kernels(releases: &[Release], flavours: &[Flavour], arches: &[Arch]) -> Vec<Kernel> {
    let mut out = Vec::new();
    for &arch in arches {
        for &release in releases {
            if arch == Arch::Aarch64 && !release.arm64() {
                continue;
            }
            for &flavour in flavours {
                out.push(Kernel {
                    release,
                    flavour,
                    arch,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_are_read_from_each_release_naming() {
        let cloud = Flavour::Cloud;
        let generic = Flavour::Generic;
        let x86 = Arch::X86_64;
        let r = Release::V5_10;
        assert_eq!(
            r.build_of("linux-image-5.10.0-46-cloud-amd64-unsigned", cloud, x86),
            Some(46)
        );
        assert_eq!(
            r.build_of("linux-image-5.10.0-46-cloud-amd64-unsigned", generic, x86),
            None
        );
        assert_eq!(
            r.build_of("linux-image-5.10.0-46-rt-amd64-unsigned", generic, x86),
            None
        );
        let r = Release::V6_12;
        assert_eq!(
            r.build_of("linux-image-6.12.118+deb13-amd64-unsigned", generic, x86),
            Some(118)
        );
        assert_eq!(
            r.build_of("linux-image-6.1.0-40-amd64-unsigned", generic, x86),
            None
        );
        assert_eq!(
            r.build_of("linux-image-6.12.118+deb12-amd64-unsigned", generic, x86),
            None
        );
        assert_eq!(
            r.build_of(
                "linux-image-6.12.118+deb13-cloud-amd64-unsigned",
                generic,
                x86
            ),
            None
        );
        assert_eq!(
            r.build_of(
                "linux-image-6.12.118+deb13-cloud-amd64-unsigned",
                cloud,
                x86
            ),
            Some(118)
        );
        assert_eq!(
            Release::V6_1.build_of("linux-image-6.1.0-40-amd64-unsigned", generic, x86),
            Some(40)
        );
        let arm = Arch::Aarch64;
        assert_eq!(
            Release::V6_1.build_of("linux-image-6.1.0-50-cloud-arm64-unsigned", cloud, arm),
            Some(50)
        );
        assert_eq!(
            Release::V6_1.build_of("linux-image-6.1.0-50-cloud-arm64-unsigned", cloud, x86),
            None
        );
    }

    #[test]
    fn all_expands_and_unknown_names_are_refused() {
        assert_eq!(parse_releases(&["all".into()]).unwrap(), Release::ALL);
        assert_eq!(
            parse_releases(&["6.1".into(), "6.1".into()]).unwrap(),
            [Release::V6_1]
        );
        assert!(parse_releases(&["4.19".into()]).is_err());
        assert_eq!(parse_flavours(&["all".into()]).unwrap(), Flavour::ALL);
        let k = kernels(&[Release::V5_10], &Flavour::ALL, &[Arch::X86_64]);
        assert_eq!(k[1].to_string(), "5.10 generic amd64");
        // arm64 boots 6.1 only.
        let k = kernels(&Release::ALL, &[Flavour::Cloud], &Arch::ALL);
        let names: Vec<String> = k.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "5.10 cloud amd64",
                "6.1 cloud amd64",
                "6.12 cloud amd64",
                "6.1 cloud arm64"
            ]
        );
    }
}
