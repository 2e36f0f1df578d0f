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
//! A repository listed in `image_access.allow_repositories` (or in a namespace listed there
//! as `namespace/*`) is allowed whatever its category's setting: the decision keeps its
//! category, and names the exception that allowed it.
//!
//! Images from other registries (`ghcr.io/...`, `registry.corp:5000/...`) are not judged here:
//! Registry Access Management decides whether their registry may be reached at all.
//!
//! [`judge`] is what the authorization plugin asks about the references it is given;
//! [`judge_repository`] what the pull gate asks about the repositories of its paths;
//! [`check_image`] what `ram check IMAGE` asks the daemon.

use serde::{Deserialize, Serialize};

use crate::policy::{
    ImageAccess, ImageRules, RepositoryPattern,
    reference::{HubRepository, Reference, ReferenceError, normalize, parse_reference},
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

/// An allowed Docker Hub repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub category: Category,
    /// The `allow_repositories` entry that allowed it, where its category's setting would not
    /// have (`someuser/tool`, `somepublisher/*`); `None` when the category is allowed.
    pub exception: Option<RepositoryPattern>,
}

/// The category of a Docker Hub repository, if `rules` allow it (by its category, or by an
/// exception), or the denial of its category.
pub fn judge_repository(rules: &ImageRules, repository: &HubRepository) -> Result<Allowed, Denial> {
    let category = category(rules, repository);
    let allowed = match category {
        Category::Organization => true,
        Category::Official => rules.official,
        Category::VerifiedPublisher => rules.verified_publishers,
        Category::Community => rules.community,
    };
    if allowed {
        return Ok(Allowed {
            category,
            exception: None,
        });
    }
    match rules
        .allow_repositories
        .iter()
        .find(|pattern| pattern.matches(repository))
    {
        Some(pattern) => Ok(Allowed {
            category,
            exception: Some(pattern.clone()),
        }),
        None => Err(Denial { category }),
    }
}

/// Whether image `reference` may be used: its category and the exception that allowed it
/// (`None`: not a Docker Hub image, not judged here), or why not.
pub fn judge(rules: &ImageRules, reference: &str) -> Result<Option<Allowed>, JudgeError> {
    match parse_reference(reference)? {
        Reference::Other(_) => Ok(None),
        Reference::Hub(repository) => Ok(Some(judge_repository(rules, &repository)?)),
    }
}

/// The answer to `ram check IMAGE`: what image access decides about a reference, as the
/// authorization plugin and the pull gate would.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageCheckAnswer {
    /// As given.
    pub image: String,
    /// As Docker writes it in full (`docker.io/library/busybox:latest`); `None` if it is not a
    /// reference.
    pub reference: Option<String>,
    pub docker_hub: bool,
    /// For another registry's image: its `host[:port]`.
    pub registry: Option<String>,
    /// For a Docker Hub image: `official`, `organization`, `verified_publisher`, `community`.
    pub category: Option<String>,
    /// Whether image access is on (`image_access.enabled`); off, every image is allowed.
    pub image_access: bool,
    pub allowed: bool,
    /// The `allow_repositories` entry that allowed it, where its category would not have.
    pub exception: Option<String>,
    /// Denied: Docker's message, as the plugin and the gate give it.
    pub message: Option<String>,
    pub explanation: String,
}

/// What image access (`access`, the policy in force) decides about `image`.
pub fn check_image(access: &ImageAccess, image: &str) -> ImageCheckAnswer {
    let mut answer = ImageCheckAnswer {
        image: image.to_owned(),
        reference: None,
        docker_hub: false,
        registry: None,
        category: None,
        image_access: access.enabled,
        allowed: true,
        exception: None,
        message: None,
        explanation: String::new(),
    };
    let parsed = match normalize(image) {
        Ok((parsed, full)) => {
            answer.reference = Some(full);
            parsed
        }
        Err(why) => {
            let message = why.to_string();
            answer.allowed = !access.enabled;
            answer.explanation = if access.enabled {
                "the authorization plugin and the pull gate refuse it".into()
            } else {
                format!("image access is off (image_access.enabled = false); {message}")
            };
            answer.message = access.enabled.then_some(message);
            return answer;
        }
    };
    let repository = match parsed {
        Reference::Other(registry) => {
            answer.explanation = format!(
                "not a Docker Hub image: image access does not judge it; whether {registry} \
                 may be reached is `ram check {registry}`'s to say"
            );
            answer.registry = Some(registry);
            return answer;
        }
        Reference::Hub(repository) => repository,
    };
    answer.docker_hub = true;
    let verdict = judge_repository(&access.rules, &repository);
    let category = match &verdict {
        Ok(allowed) => allowed.category,
        Err(denial) => denial.category,
    };
    answer.category = Some(category.as_str().to_owned());
    if !access.enabled {
        answer.explanation =
            "image access is off (image_access.enabled = false): every image is allowed".into();
        return answer;
    }
    match verdict {
        Ok(Allowed {
            exception: Some(pattern),
            ..
        }) => {
            answer.explanation = format!(
                "{} images are not allowed, but image_access.allow_repositories lists `{pattern}`",
                category.words()
            );
            answer.exception = Some(pattern.to_string());
        }
        Ok(Allowed {
            exception: None, ..
        }) => {
            answer.explanation = match category {
                Category::Organization => format!(
                    "`{}` is one of image_access.organizations, always allowed",
                    repository.namespace
                ),
                Category::Official => "official images are allowed (official = true)".into(),
                Category::VerifiedPublisher => {
                    "verified publisher images are allowed (verified_publishers = true)".into()
                }
                Category::Community => "community images are allowed (community = true)".into(),
            };
        }
        Err(denial) => {
            answer.allowed = false;
            answer.explanation = format!(
                "{} images are not allowed, and no image_access.allow_repositories entry \
                 covers docker.io/{}/{}",
                category.words(),
                repository.namespace,
                repository.name
            );
            answer.message = Some(denial.to_string());
        }
    }
    answer
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
            allow_repositories: Vec::new(),
            push: None,
        }
    }

    fn by_category(category: Category) -> Allowed {
        Allowed {
            category,
            exception: None,
        }
    }

    fn denial(rules: &ImageRules, reference: &str) -> String {
        judge(rules, reference).unwrap_err().to_string()
    }

    #[test]
    fn categories_follow_the_namespace() {
        let rules = rules();
        assert_eq!(
            judge(&rules, "busybox"),
            Ok(Some(by_category(Category::Official)))
        );
        assert_eq!(
            judge(&rules, "mycompany/app"),
            Ok(Some(by_category(Category::Organization)))
        );
        assert_eq!(
            judge(&rules, "somepublisher/tool"),
            Ok(Some(by_category(Category::VerifiedPublisher)))
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
            Ok(Some(by_category(Category::Organization)))
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

    fn with_exceptions(entries: &[&str]) -> ImageRules {
        ImageRules {
            allow_repositories: entries.iter().map(|e| e.parse().unwrap()).collect(),
            ..rules()
        }
    }

    fn exception_of(rules: &ImageRules, reference: &str) -> Option<String> {
        judge(rules, reference)
            .unwrap_or_else(|why| panic!("{reference}: {why}"))
            .and_then(|allowed| allowed.exception)
            .map(|pattern| pattern.to_string())
    }

    #[test]
    fn listed_repositories_are_allowed_whatever_their_category() {
        let rules = with_exceptions(&["someuser/tool", "otheruser/*"]);
        // A community image, allowed by its entry; it stays a community image.
        assert_eq!(
            judge(&rules, "someuser/tool:1.0"),
            Ok(Some(Allowed {
                category: Category::Community,
                exception: Some("someuser/tool".parse().unwrap()),
            }))
        );
        assert_eq!(
            exception_of(&rules, "docker.io/someuser/tool"),
            Some("someuser/tool".into())
        );
        // A single repository's entry allows no other repository of its namespace.
        assert_eq!(
            denial(&rules, "someuser/other"),
            "image access denied: community images not allowed"
        );
        assert_eq!(
            denial(&rules, "someuser/tool-two"),
            "image access denied: community images not allowed"
        );
        // A namespace's entry allows all of it, and nothing beside it.
        for image in ["otheruser/a", "index.docker.io/otheruser/b:v2"] {
            assert_eq!(exception_of(&rules, image), Some("otheruser/*".into()));
        }
        assert!(judge(&rules, "otheruser2/a").is_err());
        // Not another registry's repository of the same path: not judged here at all.
        assert_eq!(judge(&rules, "ghcr.io/someuser/tool"), Ok(None));
        // An allowed category needs no exception, and names none.
        let open = with_exceptions(&["someuser/tool", "library/busybox"]);
        assert_eq!(exception_of(&open, "busybox"), None);
        let community = ImageRules {
            community: true,
            ..open.clone()
        };
        assert_eq!(exception_of(&community, "someuser/tool"), None);
        // Official images: by their short name, under `library/`.
        let strict = ImageRules {
            official: false,
            ..open
        };
        assert_eq!(
            exception_of(&strict, "busybox:1.36"),
            Some("library/busybox".into())
        );
        assert_eq!(
            denial(&strict, "alpine"),
            "image access denied: official images not allowed"
        );
        let all_official = ImageRules {
            official: false,
            ..with_exceptions(&["library/*"])
        };
        assert_eq!(
            exception_of(&all_official, "alpine"),
            Some("library/*".into())
        );
        assert!(judge(&all_official, "someuser/tool").is_err());
    }

    #[test]
    fn check_image_says_what_the_plugin_and_the_gate_decide() {
        let mut access = ImageAccess {
            enabled: true,
            rules: with_exceptions(&["someuser/tool"]),
            ..ImageAccess::default()
        };
        let answer = check_image(&access, "someuser/tool");
        assert_eq!(
            answer.reference.as_deref(),
            Some("docker.io/someuser/tool:latest")
        );
        assert!(answer.docker_hub && answer.allowed);
        assert_eq!(answer.category.as_deref(), Some("community"));
        assert_eq!(answer.exception.as_deref(), Some("someuser/tool"));
        assert_eq!(answer.message, None);

        let answer = check_image(&access, "someuser/other:2");
        assert!(!answer.allowed);
        assert_eq!(
            answer.message.as_deref(),
            Some("image access denied: community images not allowed")
        );
        assert_eq!(answer.exception, None);

        let answer = check_image(&access, "busybox");
        assert!(answer.allowed && answer.exception.is_none());
        assert_eq!(answer.category.as_deref(), Some("official"));

        let answer = check_image(&access, "ghcr.io/someuser/tool");
        assert!(answer.allowed && !answer.docker_hub);
        assert_eq!(answer.registry.as_deref(), Some("ghcr.io"));
        assert_eq!(answer.category, None);

        let answer = check_image(&access, "SomeUser/Tool");
        assert!(!answer.allowed && answer.reference.is_none());
        assert!(
            answer
                .message
                .as_deref()
                .is_some_and(|m| m.contains("must be lowercase")),
            "{answer:?}"
        );

        access.enabled = false;
        let answer = check_image(&access, "someuser/other");
        assert!(answer.allowed && !answer.image_access);
        assert_eq!(answer.category.as_deref(), Some("community"));
    }
}
