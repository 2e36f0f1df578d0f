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
//!
//! [`judge`] is what the authorization plugin asks about the references it is given;
//! [`judge_repository`] what the pull gate asks about the repositories of its paths.

use crate::policy::{
    ImageRules,
    reference::{HubRepository, Reference, ReferenceError, parse_reference},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Official,
    Organization,
    VerifiedPublisher,
    Community,
}

impl Category {
    /// How the audit log names the category.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Official => "official",
            Self::Organization => "organization",
            Self::VerifiedPublisher => "verified_publisher",
            Self::Community => "community",
        }
    }

    /// How Docker's message names the category.
    fn words(self) -> &'static str {
        match self {
            Self::Official => "official",
            Self::Organization => "organization",
            Self::VerifiedPublisher => "verified publisher",
            Self::Community => "community",
        }
    }
}

/// An image of a category the rules do not allow. Its message is Docker's:
/// `image access denied: community images not allowed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("image access denied: {} images not allowed", category.words())]
pub struct Denial {
    pub category: Category,
}

/// Why a reference may not be used: it is not one, or the rules deny its category.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JudgeError {
    #[error(transparent)]
    Invalid(#[from] ReferenceError),
    #[error(transparent)]
    Denied(#[from] Denial),
}

/// The category of a Docker Hub repository under `rules`.
pub fn category(rules: &ImageRules, repository: &HubRepository) -> Category {
    let namespace = repository.namespace.as_str();
    if namespace == "library" {
        Category::Official
    } else if rules.organizations.iter().any(|o| o == namespace) {
        Category::Organization
    } else if rules
        .verified_publisher_namespaces
        .iter()
        .any(|v| v == namespace)
    {
        Category::VerifiedPublisher
    } else {
        Category::Community
    }
}

/// The category of a Docker Hub repository, if `rules` allow it.
pub fn judge_repository(
    rules: &ImageRules,
    repository: &HubRepository,
) -> Result<Category, Denial> {
    let category = category(rules, repository);
    let allowed = match category {
        Category::Organization => true,
        Category::Official => rules.official,
        Category::VerifiedPublisher => rules.verified_publishers,
        Category::Community => rules.community,
    };
    if allowed {
        Ok(category)
    } else {
        Err(Denial { category })
    }
}

/// Whether image `reference` may be used: its category (`None`: not a Docker Hub image, not
/// judged here), or why not.
pub fn judge(rules: &ImageRules, reference: &str) -> Result<Option<Category>, JudgeError> {
    match parse_reference(reference)? {
        Reference::Other(_) => Ok(None),
        Reference::Hub(repository) => Ok(Some(judge_repository(rules, &repository)?)),
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

    fn denial(rules: &ImageRules, reference: &str) -> String {
        judge(rules, reference).unwrap_err().to_string()
    }

    #[test]
    fn categories_follow_the_namespace() {
        let rules = rules();
        assert_eq!(judge(&rules, "busybox"), Ok(Some(Category::Official)));
        assert_eq!(
            judge(&rules, "mycompany/app"),
            Ok(Some(Category::Organization))
        );
        assert_eq!(
            judge(&rules, "somepublisher/tool"),
            Ok(Some(Category::VerifiedPublisher))
        );
        assert_eq!(
            judge(&rules, "someuser/custom-image"),
            Err(JudgeError::Denied(Denial {
                category: Category::Community
            }))
        );
        assert_eq!(
            denial(&rules, "someuser/custom-image"),
            "image access denied: community images not allowed"
        );
        assert_eq!(judge(&rules, "ghcr.io/someuser/anything"), Ok(None));
        assert!(matches!(
            judge(&rules, "SomeUser/App"),
            Err(JudgeError::Invalid(_))
        ));
        let strict = ImageRules {
            official: false,
            verified_publishers: false,
            ..rules
        };
        assert_eq!(
            denial(&strict, "docker.io/library/x"),
            "image access denied: official images not allowed"
        );
        assert_eq!(
            denial(&strict, "somepublisher/tool"),
            "image access denied: verified publisher images not allowed"
        );
        assert_eq!(
            judge(&strict, "mycompany/app"),
            Ok(Some(Category::Organization))
        );
        // Organizations are always allowed; the message exists for completeness.
        assert_eq!(
            Denial {
                category: Category::Organization
            }
            .to_string(),
            "image access denied: organization images not allowed"
        );
    }
}
