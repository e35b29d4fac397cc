//! A small RFB (VNC) client: connects over any byte stream, reads one full
//! framebuffer and encodes it as PNG. Used by `vnc/screenshot`.
