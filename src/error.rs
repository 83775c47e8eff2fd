//! Errors as the conductor sees them.
//!
//! Ironic reads a failed command's `command_error` object (`type`, `code`, `message`, `details`)
//! and an HTTP error's `faultstring`. Every error a command can produce is mapped here, in one
//! place, to the IPA error class name and code the conductor expects, so the conductor records
//! a useful `last_error` whatever went wrong inside the agent.

use serde::Serialize;
use serde_json::Value;

/// The IPA error classes Rivet reports, with their HTTP-ish codes and fixed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Generic failure of a command (IPA `CommandExecutionError`).
    CommandExecution,
    /// Bad parameters (IPA `InvalidCommandParamsError`).
    InvalidParams,
    /// Parameters that do not fit the command's signature. Ironic fails fast on this type.
    TypeError,
    /// A deploy step failed (IPA `DeploymentError`).
    Deployment,
    /// A clean step failed (IPA `CleaningError`).
    Cleaning,
    /// A service step failed (IPA `ServicingError`).
    Servicing,
    /// The conductor's hardware-manager version map differs from ours.
    VersionMismatch,
    /// No device matched (IPA `DeviceNotFound`).
    DeviceNotFound,
    /// The agent process was restarted while the command ran.
    Interrupted,
    ImageDownload,
    ImageChecksum,
    ImageWrite,
    InvalidImage,
    /// erase_devices could not erase (and verify) a disk (IPA `BlockDeviceEraseError`).
    BlockDeviceErase,
    /// A software RAID step failed (IPA `SoftwareRAIDError`).
    SoftwareRaid,
    /// An erase refused a disk holding a volume other hosts may share (IPA
    /// `ProtectedDeviceError`).
    ProtectedDevice,
}

impl ErrorKind {
    pub fn type_name(self) -> &'static str {
        match self {
            ErrorKind::CommandExecution => "CommandExecutionError",
            ErrorKind::InvalidParams => "InvalidCommandParamsError",
            ErrorKind::TypeError => "TypeError",
            ErrorKind::Deployment => "DeploymentError",
            ErrorKind::Cleaning => "CleaningError",
            ErrorKind::Servicing => "ServicingError",
            ErrorKind::VersionMismatch => "VersionMismatch",
            ErrorKind::DeviceNotFound => "DeviceNotFound",
            ErrorKind::Interrupted => "CommandExecutionError",
            ErrorKind::ImageDownload => "ImageDownloadError",
            ErrorKind::ImageChecksum => "ImageChecksumError",
            ErrorKind::ImageWrite => "ImageWriteError",
            ErrorKind::InvalidImage => "InvalidImage",
            ErrorKind::BlockDeviceErase => "BlockDeviceEraseError",
            ErrorKind::SoftwareRaid => "SoftwareRAIDError",
            ErrorKind::ProtectedDevice => "ProtectedDeviceError",
        }
    }

    pub fn code(self) -> u16 {
        match self {
            ErrorKind::InvalidParams | ErrorKind::TypeError => 400,
            ErrorKind::VersionMismatch => 409,
            ErrorKind::DeviceNotFound => 404,
            _ => 500,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ErrorKind::CommandExecution | ErrorKind::Interrupted => "Command execution failed",
            ErrorKind::InvalidParams => "Invalid command parameters",
            ErrorKind::TypeError => "Invalid keyword arguments",
            ErrorKind::Deployment => "Deploy error",
            ErrorKind::Cleaning => "Clean step failed",
            ErrorKind::Servicing => "Service step failed",
            ErrorKind::VersionMismatch => {
                "Hardware managers version mismatch, reload agent with correct version"
            }
            ErrorKind::DeviceNotFound => {
                "Error finding the disk or partition device to deploy the image onto"
            }
            ErrorKind::ImageDownload => "Error downloading image",
            ErrorKind::ImageChecksum => "Error verifying image checksum",
            ErrorKind::ImageWrite => "Error writing image to device",
            ErrorKind::InvalidImage => "Invalid image",
            ErrorKind::BlockDeviceErase => "Error erasing block device",
            ErrorKind::SoftwareRaid => "Software RAID caused unknown error",
            ErrorKind::ProtectedDevice => "A disk holds a volume that may be shared; not erased",
        }
    }
}

/// A command failure, serialised exactly as IPA's `RESTError.serialize()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {details}", kind.message())]
pub struct CommandError {
    pub kind: ErrorKind,
    pub details: String,
}

impl CommandError {
    pub fn new(kind: ErrorKind, details: impl Into<String>) -> Self {
        CommandError {
            kind,
            details: details.into(),
        }
    }

    pub fn exec(details: impl Into<String>) -> Self {
        Self::new(ErrorKind::CommandExecution, details)
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "type": self.kind.type_name(),
            "code": self.kind.code(),
            "message": self.kind.message(),
            "details": self.details,
        })
    }
}

impl Serialize for CommandError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

/// An error answered at the HTTP layer (not recorded as a command): status + faultstring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {faultstring}")]
pub struct ApiError {
    pub status: u16,
    pub faultstring: String,
}

impl ApiError {
    pub fn new(status: u16, faultstring: impl Into<String>) -> Self {
        ApiError {
            status,
            faultstring: faultstring.into(),
        }
    }

    /// WSME-style body: Ironic requires a string `faultstring` in every error answer.
    pub fn body(&self) -> Value {
        serde_json::json!({
            "faultcode": if self.status >= 500 { "Server" } else { "Client" },
            "faultstring": self.faultstring,
        })
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "401 Unauthorized: Token invalid.")
    }

    pub fn busy(command: &str) -> Self {
        Self::new(409, format!("Agent is busy: executing command {command}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_error_serialises_like_ipa() {
        let e = CommandError::new(ErrorKind::Deployment, "bad checksum");
        assert_eq!(
            e.to_json(),
            serde_json::json!({"type": "DeploymentError", "code": 500,
                               "message": "Deploy error", "details": "bad checksum"})
        );
    }

    #[test]
    fn api_error_has_faultstring() {
        let b = ApiError::busy("execute_deploy_step").body();
        assert_eq!(b["faultcode"], "Client");
        assert_eq!(
            b["faultstring"],
            "Agent is busy: executing command execute_deploy_step"
        );
        assert_eq!(ApiError::new(500, "x").body()["faultcode"], "Server");
    }
}
