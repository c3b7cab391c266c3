//! Who calls the admin API and what they may do: every person may manage
//! their own identities and connections; anything of someone else's, or of
//! everyone's, needs the capability their token carries.

use latchkey_core::capability::{Capabilities, Capability};
use tonic::Status as RpcStatus;

/// The authenticated caller of one admin request.
pub(super) struct Operator {
    pub(super) subject: String,
    pub(super) capabilities: Capabilities,
    /// As the token establishes them (roles included, for approvals).
    pub(super) caller: latchkey_core::principal::Caller,
}

impl Operator {
    pub(super) fn require(&self, capability: Capability, to: &str) -> Result<(), RpcStatus> {
        if self.capabilities.has(capability) {
            return Ok(());
        }
        Err(RpcStatus::permission_denied(format!(
            "{to} needs the '{capability}' capability, which your token does not carry"
        )))
    }

    /// Acting on someone else's things needs `capability`; your own never does.
    pub(super) fn require_unless_self(
        &self,
        owner: &str,
        capability: Capability,
        to: &str,
    ) -> Result<(), RpcStatus> {
        if owner == self.subject {
            Ok(())
        } else {
            self.require(capability, to)
        }
    }
}

/// Whose things a list asks for: the caller's (empty), everyone's (`*`),
/// or one named person's.
pub(super) enum Whose {
    Mine,
    Everyone,
    Of(String),
}

impl Operator {
    /// Reads a list's owner argument, checking `capability` unless it is the caller's own.
    pub(super) fn whose(
        &self,
        owner: &str,
        capability: Capability,
        what: &str,
    ) -> Result<Whose, RpcStatus> {
        match owner {
            "" => Ok(Whose::Mine),
            "*" => {
                self.require(capability, &format!("listing everyone's {what}"))?;
                Ok(Whose::Everyone)
            }
            other => {
                self.require_unless_self(
                    other,
                    capability,
                    &format!("listing another user's {what}"),
                )?;
                Ok(Whose::Of(other.to_string()))
            }
        }
    }

    /// The user a change is for (the caller when empty), checking
    /// `capability` when it is someone else.
    pub(super) fn acting_for(
        &self,
        user: &str,
        capability: Capability,
        to: &str,
    ) -> Result<String, RpcStatus> {
        let user = if user.is_empty() { &self.subject } else { user };
        self.require_unless_self(user, capability, to)?;
        Ok(user.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capability_is_named() {
        let op = Operator {
            subject: "alice".into(),
            capabilities: Capabilities::default(),
            caller: Default::default(),
        };
        let err = op
            .require(Capability::UsersManage, "deactivating users")
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("'users:manage'"),
            "{}",
            err.message()
        );
        assert!(
            op.require_unless_self("alice", Capability::IdentitiesManage, "x")
                .is_ok()
        );
        assert!(
            op.require_unless_self("bob", Capability::IdentitiesManage, "x")
                .is_err()
        );
    }
}
