//! Image Access Management: which Docker Hub images may be used. No DNS or IP rule can tell an
//! official image from a community one; this works on image references, as Docker's registry
//! API and engine API carry them.
//!
//! Categories, decided from the repository's namespace on Docker Hub:
//! - Docker Official Images: the `library/` namespace (`busybox` is `docker.io/library/busybox`);
//! - Organization images: the namespaces in `image_access.organizations` (always allowed);
//! - Docker Verified Publisher images: the namespaces in the verified-publisher list;
//! - Community images: every other namespace.
//!
//! Images from other registries (`ghcr.io/...`, `registry.corp:5000/...`) are not judged here:
//! Registry Access Management decides whether their registry may be reached at all.

use super::reference::{HubRepository, Reference, parse_reference};
use crate::policy::ImageRules;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Official,
    Organization,
    VerifiedPublisher,
    Community,
}

impl Category {
    /// The words of Docker's message: `image access denied: community images not allowed`.
    pub fn denial(self) -> &'static str {
        match self {
            Self::Official => "image access denied: official images not allowed",
            Self::Organization => "image access denied: organization images not allowed",
            Self::VerifiedPublisher => "image access denied: verified publisher images not allowed",
            Self::Community => "image access denied: community images not allowed",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Official => "official",
            Self::Organization => "organization",
            Self::VerifiedPublisher => "verified_publisher",
            Self::Community => "community",
        }
    }
}

/// The judgement of image references under the policy's rules.
pub trait Judge {
    fn category(&self, repository: &HubRepository) -> Category;
    fn judge(&self, reference: &str) -> Result<Option<Category>, String>;
}

impl Judge for ImageRules {
    fn category(&self, repository: &HubRepository) -> Category {
        let namespace = repository.namespace.as_str();
        if namespace == "library" {
            Category::Official
        } else if self.organizations.iter().any(|o| o == namespace) {
            Category::Organization
        } else if self
            .verified_publisher_namespaces
            .iter()
            .any(|v| v == namespace)
        {
            Category::VerifiedPublisher
        } else {
            Category::Community
        }
    }

    /// `Ok` with the category when `reference` may be used (`None`: not a Docker Hub image),
    /// or the denial message.
    fn judge(&self, reference: &str) -> Result<Option<Category>, String> {
        let repository = match parse_reference(reference)? {
            Reference::Other(_) => return Ok(None),
            Reference::Hub(repository) => repository,
        };
        let category = self.category(&repository);
        let allowed = match category {
            Category::Organization => true,
            Category::Official => self.official,
            Category::VerifiedPublisher => self.verified_publishers,
            Category::Community => self.community,
        };
        if allowed {
            Ok(Some(category))
        } else {
            Err(category.denial().to_owned())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The rules the image and plugin tests judge with.
    pub(crate) fn rules() -> ImageRules {
        ImageRules {
            official: true,
            verified_publishers: true,
            community: false,
            organizations: vec!["mycompany".into()],
            verified_publisher_namespaces: vec!["somepublisher".into()],
        }
    }

    #[test]
    fn categories_follow_the_namespace() {
        let rules = rules();
        assert_eq!(rules.judge("busybox"), Ok(Some(Category::Official)));
        assert_eq!(
            rules.judge("mycompany/app"),
            Ok(Some(Category::Organization))
        );
        assert_eq!(
            rules.judge("somepublisher/tool"),
            Ok(Some(Category::VerifiedPublisher))
        );
        assert_eq!(
            rules.judge("someuser/custom-image"),
            Err("image access denied: community images not allowed".into())
        );
        assert_eq!(rules.judge("ghcr.io/someuser/anything"), Ok(None));
        let strict = ImageRules {
            official: false,
            verified_publishers: false,
            ..rules
        };
        assert_eq!(
            strict.judge("docker.io/library/x"),
            Err("image access denied: official images not allowed".into())
        );
        assert_eq!(
            strict.judge("somepublisher/tool"),
            Err("image access denied: verified publisher images not allowed".into())
        );
        assert_eq!(
            strict.judge("mycompany/app"),
            Ok(Some(Category::Organization))
        );
    }
}
