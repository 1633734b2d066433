//! The unwind tables of a loaded object (`.eh_frame_hdr`, `.eh_frame`):
//! a function's exact extent, and the stretches of it where the canonical
//! frame address is the stack pointer plus a constant, which is what the
//! handler's caller check needs.
//!
//! Each admitted function's FDE program (the CIE's initial instructions,
//! then the FDE's) is run once to split the function into rows
//! `(start, end, cfa, fp)` wherever the CFA is rsp or rbp plus a constant:
//! that is what the handler's caller check reads (an rbp-based row only
//! for the interrupted frame, whose rbp the signal context holds). A
//! stretch where the CFA is an expression gets no row and stays refused.
//! glibc's string routines never move rsp (one row, CFA = rsp + 8); libm's
//! C functions have a few rows each; the vDSO's time functions realign
//! the stack behind rbp (CFA = rbp + 16 in their bodies).

use super::objects::Object;
use super::Row;

/// Longest function admitted: a guard against a misread FDE (glibc's
/// largest string routine is a few KiB).
const MAX_FN_LEN: usize = 1 << 16;

impl Object {
    /// The FDE of the function containing `pc`, from `.eh_frame_hdr`'s
    /// sorted table: (function start, FDE address). None for any table
    /// encoding other than the one binutils emits.
    fn find_fde(&self, pc: usize) -> Option<(usize, usize)> {
        let hdr = self.eh_frame_hdr;
        if hdr == 0 || self.read::<u8>(hdr)? != 1 {
            return None;
        }
        let ptr_enc: u8 = self.read(hdr + 1)?;
        let count_enc: u8 = self.read(hdr + 2)?;
        let table_enc: u8 = self.read(hdr + 3)?;
        // The table must be datarel|sdata4 pairs and the count udata4.
        if count_enc != 0x03 || table_enc != 0x3b {
            return None;
        }
        let count_at = hdr + 4 + enc_size(ptr_enc)?;
        let n = self.read::<u32>(count_at)? as usize;
        let table = count_at + 4;
        let rel = |at: usize| -> Option<usize> {
            Some(hdr.wrapping_add_signed(self.read::<i32>(at)? as isize))
        };
        // Last entry starting at or below pc.
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if rel(table + 8 * mid)? <= pc {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let i = lo.checked_sub(1)?;
        Some((rel(table + 8 * i)?, rel(table + 8 * i + 4)?))
    }

    /// The rows of the function containing `pc` (see [`Row`]), clipped to
    /// `[lo, hi)`, and returns the function's extent: its CFI program (the CIE's initial instructions, then the
    /// FDE's) run from the function start, keeping the stretches where the
    /// CFA is rsp + a constant. None if the FDE or CIE is in a form we do
    /// not parse, the function is implausibly long, or it does not cover
    /// `pc`.
    pub(super) fn rows(
        &self,
        pc: usize,
        lo: usize,
        hi: usize,
        out: &mut Vec<Row>,
    ) -> Option<(usize, usize)> {
        let (start, fde) = self.find_fde(pc)?;
        let len: u32 = self.read(fde)?;
        if len == 0 || len == u32::MAX {
            return None; // terminator, or a 64-bit length we do not parse
        }
        let fde_end = fde + 4 + len as usize;
        let cie_off: u32 = self.read(fde + 4)?;
        let cie = self.cie((fde + 4).checked_sub(cie_off as usize)?)?;
        let size = enc_size(cie.enc)?;
        let at = fde + 8 + size; // after pc_begin
        let range = match size {
            2 => self.read::<u16>(at)? as usize,
            4 => self.read::<u32>(at)? as usize,
            8 => self.read::<u64>(at)? as usize,
            _ => return None,
        };
        let end = start.checked_add(range)?;
        if !(start <= pc && pc < end && range <= MAX_FN_LEN) {
            return None;
        }
        let mut insns = at + size;
        if cie.augmented {
            let (aug_len, next) = self.leb(insns)?;
            insns = next.checked_add(aug_len as usize)?;
        }
        let mut st = CfiState {
            pc: start,
            reg: RSP,
            off: 8,
            saved: Vec::new(),
            rows: Vec::new(),
        };
        self.run_cfi(&cie, cie.insns.0, cie.insns.1, &mut st)?;
        self.run_cfi(&cie, insns, fde_end, &mut st)?;
        st.emit(end);
        for r in st.rows {
            let (s, e) = (r.start.max(lo), r.end.min(hi));
            if s < e {
                out.push(Row {
                    start: s,
                    end: e,
                    ..r
                });
            }
        }
        Some((start, end))
    }

    /// The CIE at `cie`: pointer encoding ('R'), alignment factors, and its
    /// initial instructions.
    fn cie(&self, cie: usize) -> Option<Cie> {
        let len: u32 = self.read(cie)?;
        if len == u32::MAX || self.read::<u32>(cie + 4)? != 0 {
            return None;
        }
        let end = cie + 4 + len as usize;
        let version: u8 = self.read(cie + 8)?;
        let mut at = cie + 9;
        let mut aug = Vec::new();
        loop {
            let b: u8 = self.read(at)?;
            at += 1;
            if b == 0 {
                break;
            }
            aug.push(b);
        }
        let (code_align, next) = self.leb(at)?;
        let (data_align, next) = self.sleb(next)?;
        let (ra, next) = if version == 1 {
            (self.read::<u8>(next)? as u64, next + 1)
        } else {
            self.leb(next)?
        };
        if ra != RA {
            return None;
        }
        at = next;
        let mut enc = 0u8; // absptr without 'R'
        let augmented = aug.first() == Some(&b'z');
        if augmented {
            let (aug_len, data) = self.leb(at)?;
            let mut p = data;
            for &c in &aug[1..] {
                match c {
                    b'R' => {
                        enc = self.read(p)?;
                        p += 1;
                    }
                    b'L' => p += 1,
                    b'P' => {
                        let penc: u8 = self.read(p)?;
                        p += 1 + enc_size(penc)?;
                    }
                    b'S' | b'B' => {}
                    _ => return None,
                }
            }
            at = data.checked_add(aug_len as usize)?;
        } else if !aug.is_empty() {
            return None;
        }
        Some(Cie {
            enc,
            augmented,
            code_align,
            data_align,
            insns: (at, end),
        })
    }

    /// Runs the CFI instructions in `[at, end)`, tracking only the CFA rule.
    fn run_cfi(&self, cie: &Cie, mut at: usize, end: usize, st: &mut CfiState) -> Option<()> {
        while at < end {
            let op: u8 = self.read(at)?;
            at += 1;
            let advance = |st: &mut CfiState, d: u64| -> Option<()> {
                let to = st
                    .pc
                    .checked_add((d.checked_mul(cie.code_align)?) as usize)?;
                st.emit(to);
                st.pc = to;
                Some(())
            };
            match op >> 6 {
                1 => {
                    advance(st, u64::from(op & 0x3f))?;
                    continue;
                }
                2 => {
                    at = self.leb(at)?.1; // offset: where a register is saved
                    continue;
                }
                3 => continue, // restore a register
                _ => {}
            }
            match op {
                0x00 => {}
                0x02 => {
                    advance(st, u64::from(self.read::<u8>(at)?))?;
                    at += 1;
                }
                0x03 => {
                    advance(st, u64::from(self.read::<u16>(at)?))?;
                    at += 2;
                }
                0x04 => {
                    advance(st, u64::from(self.read::<u32>(at)?))?;
                    at += 4;
                }
                // offset_extended, register, val_offset: two ULEBs.
                0x05 | 0x09 | 0x14 => at = self.leb(self.leb(at)?.1)?.1,
                // restore_extended, undefined, same_value, GNU_args_size.
                0x06..=0x08 | 0x2e => at = self.leb(at)?.1,
                0x0a => st.saved.push((st.reg, st.off)),
                0x0b => (st.reg, st.off) = st.saved.pop()?,
                0x0c => {
                    let (reg, next) = self.leb(at)?;
                    let (off, next) = self.leb(next)?;
                    (st.reg, st.off, at) = (reg, i64::try_from(off).ok()?, next);
                }
                0x0d => (st.reg, at) = self.leb(at)?,
                0x0e => {
                    let (off, next) = self.leb(at)?;
                    (st.off, at) = (i64::try_from(off).ok()?, next);
                }
                0x0f => {
                    // def_cfa_expression: the CFA is no longer rsp + k.
                    let (n, next) = self.leb(at)?;
                    st.reg = NO_REG;
                    at = next.checked_add(n as usize)?;
                }
                // expression, val_expression: a register and a block.
                0x10 | 0x16 => {
                    let (n, next) = self.leb(self.leb(at)?.1)?;
                    at = next.checked_add(n as usize)?;
                }
                // offset_extended_sf, val_offset_sf: ULEB, SLEB.
                0x11 | 0x15 => at = self.sleb(self.leb(at)?.1)?.1,
                0x12 => {
                    let (reg, next) = self.leb(at)?;
                    let (off, next) = self.sleb(next)?;
                    (st.reg, st.off, at) = (reg, off.checked_mul(cie.data_align)?, next);
                }
                0x13 => {
                    let (off, next) = self.sleb(at)?;
                    (st.off, at) = (off.checked_mul(cie.data_align)?, next);
                }
                _ => return None, // set_loc and vendor opcodes: not parsed
            }
        }
        Some(())
    }

    fn leb(&self, mut at: usize) -> Option<(u64, usize)> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b: u8 = self.read(at)?;
            at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some((v, at));
            }
        }
        None
    }

    fn sleb(&self, mut at: usize) -> Option<(i64, usize)> {
        let mut v = 0i64;
        for shift in (0..64).step_by(7) {
            let b: u8 = self.read(at)?;
            at += 1;
            v |= i64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if shift + 7 < 64 && b & 0x40 != 0 {
                    v |= -1i64 << (shift + 7);
                }
                return Some((v, at));
            }
        }
        None
    }
}

/// DWARF register numbers of the stack pointer and the return-address
/// column (the architecture's psABI).
const RSP: u64 = crate::arch::DWARF_SP;
const RBP: u64 = crate::arch::DWARF_FP;
const RA: u64 = crate::arch::DWARF_RA;
/// A CFA that is not a register plus an offset (an expression).
const NO_REG: u64 = u64::MAX;

/// What `rows` needs from a CIE.
struct Cie {
    enc: u8,
    augmented: bool,
    code_align: u64,
    data_align: i64,
    /// The initial instructions, `[start, end)`.
    insns: (usize, usize),
}

/// The CFA rule while a CFI program runs, and the rows emitted so far.
struct CfiState {
    pc: usize,
    reg: u64,
    off: i64,
    saved: Vec<(u64, i64)>,
    rows: Vec<Row>,
}

impl CfiState {
    /// Closes the stretch `[pc, to)` under the current rule: a row if the
    /// CFA is rsp or rbp plus a sane offset (at least the return address
    /// (and, for rbp, the saved rbp), below 64 KiB), none otherwise (pcs
    /// there stay refused).
    fn emit(&mut self, to: usize) {
        let fp = match self.reg {
            RSP if (8..1 << 16).contains(&self.off) => false,
            RBP if (16..1 << 16).contains(&self.off) => true,
            _ => return,
        };
        if to > self.pc {
            let cfa = self.off as usize;
            match self.rows.last_mut() {
                Some(r) if r.end == self.pc && r.cfa == cfa && r.fp == fp => r.end = to,
                _ => self.rows.push(Row {
                    start: self.pc,
                    end: to,
                    cfa,
                    fp,
                }),
            }
        }
    }
}

/// Size of a DWARF EH pointer of encoding `enc` (fixed-size formats only).
fn enc_size(enc: u8) -> Option<usize> {
    match enc & 0x0f {
        0x00 | 0x04 | 0x0c => Some(8),
        0x02 | 0x0a => Some(2),
        0x03 | 0x0b => Some(4),
        _ => None,
    }
}
