//! The RFB messages the client sends and the numbers it reads (RFC 6143),
//! and the choice of protocol version.

use super::RfbError;

pub(super) const SECURITY_NONE: u8 = 1;

pub(super) const ENCODING_RAW: i32 = 0;
pub(super) const ENCODING_COPY_RECT: i32 = 1;
pub(super) const ENCODING_DESKTOP_SIZE: i32 = -223;

pub(super) const MSG_FRAMEBUFFER_UPDATE: u8 = 0;
pub(super) const MSG_SET_COLOUR_MAP_ENTRIES: u8 = 1;
pub(super) const MSG_BELL: u8 = 2;
pub(super) const MSG_SERVER_CUT_TEXT: u8 = 3;

/// How much of a failure reason or desktop name is kept; the rest is skipped.
pub(super) const MAX_TEXT: usize = 4096;

/// SetPixelFormat: 32 bpp, depth 24, little-endian, true colour, 8 bits per
/// channel, red at bit 16, green at 8, blue at 0. On the wire a pixel is then
/// the bytes B, G, R, (unused).
pub(super) const SET_PIXEL_FORMAT: [u8; 20] = [
    0, 0, 0, 0, // message type, padding
    32, 24, 0, 1, // bits per pixel, depth, big-endian flag, true-colour flag
    0, 255, 0, 255, 0, 255, // red, green, blue maximum
    16, 8, 0, // red, green, blue shift
    0, 0, 0, // padding
];

/// SetEncodings: Raw, CopyRect and the DesktopSize pseudo-encoding.
pub(super) const SET_ENCODINGS: [u8; 16] = {
    let raw = ENCODING_RAW.to_be_bytes();
    let copy = ENCODING_COPY_RECT.to_be_bytes();
    let size = ENCODING_DESKTOP_SIZE.to_be_bytes();
    [
        2, 0, 0, 3, // message type, padding, number of encodings
        raw[0], raw[1], raw[2], raw[3], //
        copy[0], copy[1], copy[2], copy[3], //
        size[0], size[1], size[2], size[3],
    ]
};

/// The protocol version spoken with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Version {
    V3_3,
    V3_7,
    V3_8,
}

impl Version {
    pub(super) fn reply(self) -> &'static [u8; 12] {
        match self {
            Version::V3_3 => b"RFB 003.003\n",
            Version::V3_7 => b"RFB 003.007\n",
            Version::V3_8 => b"RFB 003.008\n",
        }
    }
}

/// Picks the highest version both sides speak. Per RFC 6143 7.1.1, 3.4 to 3.6
/// are spoken as 3.3; anything newer than 3.8 (Apple's 3.889, RealVNC's 4.x
/// and 5.x) is answered with 3.8.
pub(super) fn negotiate_version(announced: &[u8; 12]) -> Result<Version, RfbError> {
    let number = |digits: &[u8]| -> Option<u32> {
        if digits.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(digits).ok()?.parse().ok()
        } else {
            None
        }
    };
    let parsed = if announced.starts_with(b"RFB ") && announced[7] == b'.' && announced[11] == b'\n'
    {
        number(&announced[4..7]).zip(number(&announced[8..11]))
    } else {
        None
    };
    match parsed {
        Some((3, 8..) | (4.., _)) => Ok(Version::V3_8),
        Some((3, 7)) => Ok(Version::V3_7),
        Some((3, 3..=6)) => Ok(Version::V3_3),
        _ => Err(RfbError::UnsupportedVersion(
            String::from_utf8_lossy(announced).trim_end().to_owned(),
        )),
    }
}

pub(super) fn security_type_name(t: u32) -> &'static str {
    match t {
        0 => "Invalid",
        1 => "None",
        2 => "VNC Authentication",
        5 => "RA2",
        6 => "RA2ne",
        16 => "Tight",
        17 => "Ultra",
        18 => "TLS",
        19 => "VeNCrypt",
        20 => "SASL",
        21 => "MD5 hash",
        22 => "xvp",
        30 => "Apple Remote Desktop",
        _ => "unknown",
    }
}

/// e.g. `VNC Authentication (2), VeNCrypt (19)`.
pub(super) fn describe_security_types(types: impl IntoIterator<Item = u32>) -> String {
    types
        .into_iter()
        .map(|t| format!("{} ({t})", security_type_name(t)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// FramebufferUpdateRequest, non-incremental, for the whole screen.
pub(super) fn full_update_request(width: u16, height: u16) -> [u8; 10] {
    let [w0, w1] = width.to_be_bytes();
    let [h0, h1] = height.to_be_bytes();
    [3, 0, 0, 0, 0, 0, w0, w1, h0, h1]
}
