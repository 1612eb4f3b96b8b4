//! A reader for the part of the MATLAB 5 MAT-file format that datasets use: numeric arrays,
//! stored plain (`miMATRIX`) or zlib-compressed (`miCOMPRESSED`), either byte order.
//!
//! Written here rather than taken from the `matfile` crate because a loader must never panic or
//! print on a hostile file: every length is checked against the bytes actually present, the
//! decompressed size is bounded by the element's own tag, and errors name the variable.
//! Cell, struct, char, sparse and object variables are skipped.
//!
//! Layout (MathWorks, "MAT-File Format", version 5): a 128-byte header (text; version 0x0100 and
//! the endian indicator `IM` or `MI` in its last four bytes), then data elements. An element's tag
//! is (type u32, size u32), or in the small form (size << 16 | type) with up to 4 data bytes in the
//! tag itself. Uncompressed elements are padded to 8 bytes. A numeric matrix holds, in order, the
//! array flags (class in the low byte), the dimensions (int32), the name (int8) and the real part
//! (any numeric type: MATLAB stores e.g. small doubles as uint8 to save space).

use std::io::Read;
use std::path::Path;

use flate2::read::ZlibDecoder;

use super::DataError;

/// One numeric variable, column-major as MATLAB stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct MatArray {
    pub name: String,
    pub dims: Vec<usize>,
    pub data: MatData,
}

/// A variable's values: bytes kept as bytes (images), anything else widened to f64.
#[derive(Debug, Clone, PartialEq)]
pub enum MatData {
    U8(Vec<u8>),
    F64(Vec<f64>),
}

const HEADER: usize = 128;
const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
/// Array classes of numeric matrices: mxDOUBLE_CLASS (6) .. mxUINT64_CLASS (15).
const NUMERIC_CLASSES: std::ops::RangeInclusive<u32> = 6..=15;
const MX_UINT8: u32 = 9;

/// Reads every numeric variable of the MAT file at `path`.
pub fn read_arrays(path: &Path) -> Result<Vec<MatArray>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e, "a MATLAB 5 .mat file"))?;
    parse(&bytes).map_err(|reason| match reason {
        Problem::Truncated { expected } => DataError::Truncated {
            path: path.to_path_buf(),
            expected: expected as u64,
            found: bytes.len() as u64,
        },
        Problem::Corrupt(reason) => DataError::corrupt(path, reason),
    })
}

/// What is wrong, before the path is attached.
#[derive(Debug)]
enum Problem {
    /// The file must be at least `expected` bytes long.
    Truncated {
        expected: usize,
    },
    Corrupt(String),
}

fn corrupt(reason: impl Into<String>) -> Problem {
    Problem::Corrupt(reason.into())
}

/// Parses a whole MAT file held in memory.
fn parse(bytes: &[u8]) -> Result<Vec<MatArray>, Problem> {
    if bytes.len() < HEADER {
        return Err(Problem::Truncated { expected: HEADER });
    }
    let big_endian = match &bytes[126..128] {
        b"IM" => false,
        b"MI" => true,
        _ => {
            return Err(corrupt(
                "no MATLAB 5 endian indicator (IM/MI) at byte 126: not a MAT v5 file",
            ))
        }
    };
    let order = ByteOrder { big_endian };
    let version = order.u16(&bytes[124..126]);
    if version != 0x0100 {
        return Err(corrupt(format!(
            "MAT-file version {version:#06x}, expected 0x0100 (v7.3 HDF5 files are not supported: \
             save with -v7)"
        )));
    }
    let mut arrays = Vec::new();
    let mut pos = HEADER;
    while pos < bytes.len() {
        let element = order.tag(bytes, pos)?;
        let data = &bytes[element.data.clone()];
        let array = match element.kind {
            MI_MATRIX => order.matrix(data)?,
            MI_COMPRESSED => order.compressed(data)?,
            _ => None,
        };
        arrays.extend(array);
        // Compressed elements are not padded; plain ones end on an 8-byte boundary.
        pos = if element.kind == MI_COMPRESSED {
            element.data.end
        } else {
            element.padded_end.min(bytes.len())
        };
    }
    Ok(arrays)
}

/// A parsed element tag: its type and where its data lies in the enclosing buffer.
struct Element {
    kind: u32,
    data: std::ops::Range<usize>,
    /// End of the data rounded up to 8 bytes (where the next element starts).
    padded_end: usize,
}

#[derive(Clone, Copy)]
struct ByteOrder {
    big_endian: bool,
}

impl ByteOrder {
    fn u16(self, b: &[u8]) -> u16 {
        let b = [b[0], b[1]];
        if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// The element whose tag starts at `pos` in `buf`; its data must lie inside `buf`.
    fn tag(self, buf: &[u8], pos: usize) -> Result<Element, Problem> {
        if buf.len() < pos + 8 {
            return Err(Problem::Truncated { expected: pos + 8 });
        }
        let first = self.u32(&buf[pos..]);
        if first >> 16 != 0 {
            // Small element: size in the upper half, data in the tag's second word.
            let size = (first >> 16) as usize;
            if size > 4 {
                return Err(corrupt(format!(
                    "small data element at byte {pos} claims {size} bytes (at most 4)"
                )));
            }
            return Ok(Element {
                kind: first & 0xffff,
                data: pos + 4..pos + 4 + size,
                padded_end: pos + 8,
            });
        }
        let size = self.u32(&buf[pos + 4..]) as usize;
        let start = pos + 8;
        let end = start
            .checked_add(size)
            .ok_or_else(|| corrupt("element size overflows"))?;
        if end > buf.len() {
            return Err(Problem::Truncated { expected: end });
        }
        Ok(Element {
            kind: first,
            data: start..end,
            padded_end: end.div_ceil(8).saturating_mul(8),
        })
    }

    /// Inflates a compressed element and parses the matrix inside. The inner tag gives the
    /// decompressed size, so at most that much is ever inflated.
    fn compressed(self, data: &[u8]) -> Result<Option<MatArray>, Problem> {
        let mut decoder = ZlibDecoder::new(data);
        let mut inner = vec![0u8; 8];
        decoder
            .read_exact(&mut inner)
            .map_err(|e| corrupt(format!("compressed variable: zlib: {e}")))?;
        let kind = self.u32(&inner);
        if kind != MI_MATRIX {
            return Ok(None);
        }
        let size = u64::from(self.u32(&inner[4..]));
        decoder
            .take(size)
            .read_to_end(&mut inner)
            .map_err(|e| corrupt(format!("compressed variable: zlib: {e}")))?;
        if (inner.len() as u64) < 8 + size {
            return Err(corrupt(format!(
                "compressed variable inflates to {} bytes, its tag promises {}",
                inner.len(),
                8 + size
            )));
        }
        self.matrix(&inner[8..])
    }

    /// Parses the sub-elements of a matrix; `None` for non-numeric classes.
    fn matrix(self, data: &[u8]) -> Result<Option<MatArray>, Problem> {
        let truncated = |what: &str| corrupt(format!("matrix ends inside its {what}"));
        let flags = self.tag(data, 0).map_err(|_| truncated("array flags"))?;
        if flags.kind != MI_UINT32 || flags.data.len() != 8 {
            return Err(corrupt("matrix does not start with its 8-byte array flags"));
        }
        let flag_word = self.u32(&data[flags.data.start..]);
        let class = flag_word & 0xff;
        if !NUMERIC_CLASSES.contains(&class) {
            return Ok(None);
        }
        let dims_el = self
            .tag(data, flags.padded_end)
            .map_err(|_| truncated("dimensions"))?;
        if dims_el.kind != MI_INT32 || dims_el.data.len() < 8 || dims_el.data.len() % 4 != 0 {
            return Err(corrupt(
                "matrix dimensions are not an int32 array of 2 or more",
            ));
        }
        let dims: Vec<i32> = data[dims_el.data.clone()]
            .chunks_exact(4)
            .map(|b| self.u32(b) as i32)
            .collect();
        let name_el = self
            .tag(data, dims_el.padded_end)
            .map_err(|_| truncated("name"))?;
        let name = String::from_utf8_lossy(&data[name_el.data.clone()]).into_owned();
        if dims.iter().any(|&d| d < 0) {
            return Err(corrupt(format!(
                "variable {name}: negative dimension in {dims:?}"
            )));
        }
        let dims: Vec<usize> = dims.into_iter().map(|d| d as usize).collect();
        let count = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| corrupt(format!("variable {name}: dimensions {dims:?} overflow")))?;
        let real = self
            .tag(data, name_el.padded_end)
            .map_err(|_| corrupt(format!("variable {name}: ends before its values")))?;
        let bytes = &data[real.data.clone()];
        let width = match real.kind {
            MI_INT8 | MI_UINT8 => 1,
            MI_INT16 | MI_UINT16 => 2,
            MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
            MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
            other => {
                return Err(corrupt(format!(
                    "variable {name}: values of data type {other} (expected a numeric type)"
                )))
            }
        };
        if bytes.len() != count.saturating_mul(width) {
            return Err(corrupt(format!(
                "variable {name}: {} bytes of type {} for dimensions {dims:?} ({count} values of {width} bytes)",
                bytes.len(),
                real.kind
            )));
        }
        let values = if class == MX_UINT8 && real.kind == MI_UINT8 {
            MatData::U8(bytes.to_vec())
        } else {
            MatData::F64(
                bytes
                    .chunks_exact(width)
                    .map(|b| self.number(real.kind, b))
                    .collect(),
            )
        };
        Ok(Some(MatArray {
            name,
            dims,
            data: values,
        }))
    }

    /// One value of data type `kind` (already checked numeric, `b` of its width) as f64.
    fn number(self, kind: u32, b: &[u8]) -> f64 {
        let mut word = [0u8; 8];
        word[..b.len()].copy_from_slice(b);
        if self.big_endian {
            word[..b.len()].reverse();
        }
        let le = u64::from_le_bytes(word);
        match kind {
            MI_INT8 => f64::from(le as u8 as i8),
            MI_UINT8 => f64::from(le as u8),
            MI_INT16 => f64::from(le as u16 as i16),
            MI_UINT16 => f64::from(le as u16),
            MI_INT32 => f64::from(le as u32 as i32),
            MI_UINT32 => f64::from(le as u32),
            MI_SINGLE => f64::from(f32::from_bits(le as u32)),
            MI_INT64 => le as i64 as f64,
            MI_UINT64 => le as f64,
            _ => f64::from_bits(le),
        }
    }
}

/// Writes MAT v5 files for tests: the exact byte layout MATLAB and scipy produce.
#[cfg(test)]
pub(crate) mod write {
    use std::io::Write;

    /// Values of a test variable.
    pub enum Values<'a> {
        U8(&'a [u8]),
        F64(&'a [f64]),
    }

    fn element(out: &mut Vec<u8>, kind: u32, data: &[u8]) {
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
    }

    /// The miMATRIX element of one variable.
    pub fn matrix(name: &str, dims: &[usize], values: Values) -> Vec<u8> {
        let mut body = Vec::new();
        let class: u32 = match values {
            Values::U8(_) => 9,
            Values::F64(_) => 6,
        };
        element(
            &mut body,
            6,
            &[class.to_le_bytes(), 0u32.to_le_bytes()].concat(),
        );
        let dims: Vec<u8> = dims
            .iter()
            .flat_map(|&d| (d as i32).to_le_bytes())
            .collect();
        element(&mut body, 5, &dims);
        if name.len() <= 4 {
            // MATLAB writes short names in the small element form, data inside the tag.
            body.extend_from_slice(&((name.len() as u32) << 16 | 1).to_le_bytes());
            let mut word = [0u8; 4];
            word[..name.len()].copy_from_slice(name.as_bytes());
            body.extend_from_slice(&word);
        } else {
            element(&mut body, 1, name.as_bytes());
        }
        match values {
            Values::U8(v) => element(&mut body, 2, v),
            Values::F64(v) => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                element(&mut body, 9, &bytes)
            }
        }
        let mut out = Vec::new();
        element(&mut out, 14, &body);
        out
    }

    /// A whole file of `variables` (miMATRIX elements), zlib-compressed each if `compressed`.
    pub fn file(variables: &[Vec<u8>], compressed: bool) -> Vec<u8> {
        let mut out = vec![b' '; 116];
        out[..22].copy_from_slice(b"MATLAB 5.0 MAT-file, t");
        out.extend_from_slice(&[0u8; 8]);
        out.extend_from_slice(&0x0100u16.to_le_bytes());
        out.extend_from_slice(b"IM");
        for variable in variables {
            if compressed {
                let mut encoder =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                let packed = encoder
                    .write_all(variable)
                    .and_then(|()| encoder.finish())
                    .unwrap_or_default();
                out.extend_from_slice(&15u32.to_le_bytes());
                out.extend_from_slice(&(packed.len() as u32).to_le_bytes());
                out.extend_from_slice(&packed);
            } else {
                out.extend_from_slice(variable);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::write::{file, matrix, Values};
    use super::*;

    #[test]
    fn plain_and_compressed_variables_read_back() {
        for compressed in [false, true] {
            let x: Vec<u8> = (0..24).collect();
            let bytes = file(
                &[
                    matrix("X", &[2, 3, 4], Values::U8(&x)),
                    matrix("y", &[3, 1], Values::F64(&[1.0, 10.0, 3.5])),
                ],
                compressed,
            );
            let arrays = parse(&bytes).unwrap();
            assert_eq!(arrays.len(), 2, "compressed={compressed}");
            assert_eq!(arrays[0].name, "X");
            assert_eq!(arrays[0].dims, vec![2, 3, 4]);
            assert_eq!(arrays[0].data, MatData::U8(x));
            assert_eq!(arrays[1].data, MatData::F64(vec![1.0, 10.0, 3.5]));
        }
    }

    #[test]
    fn a_cut_file_is_reported_truncated() {
        let bytes = file(&[matrix("X", &[4, 4], Values::U8(&[7; 16]))], false);
        let cut = &bytes[..bytes.len() - 5];
        assert!(matches!(parse(cut), Err(Problem::Truncated { .. })));
        assert!(matches!(
            parse(&bytes[..100]),
            Err(Problem::Truncated { expected: 128 })
        ));
    }

    #[test]
    fn a_value_count_that_disagrees_with_the_dimensions_is_corrupt() {
        let bytes = file(&[matrix("X", &[4, 5], Values::U8(&[7; 16]))], false);
        let Err(Problem::Corrupt(reason)) = parse(&bytes) else {
            panic!("expected a corrupt error");
        };
        assert!(
            reason.contains("variable X") && reason.contains("[4, 5]"),
            "{reason}"
        );
    }

    #[test]
    fn a_forged_compressed_size_is_corrupt_not_an_allocation() {
        let mut variable = matrix("X", &[2, 2], Values::U8(&[1, 2, 3, 4]));
        variable[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let bytes = file(&[variable], true);
        assert!(matches!(parse(&bytes), Err(Problem::Corrupt(_))));
    }

    #[test]
    fn a_non_mat_file_is_rejected_by_its_header() {
        let bytes = vec![0u8; 200];
        let Err(Problem::Corrupt(reason)) = parse(&bytes) else {
            panic!("expected a corrupt error");
        };
        assert!(reason.contains("endian indicator"), "{reason}");
    }

    #[test]
    fn big_endian_files_read_the_same_values() {
        // Header with MI and a big-endian u8 matrix built by hand.
        let mut out = vec![b' '; 116];
        out.extend_from_slice(&[0u8; 8]);
        out.extend_from_slice(&0x0100u16.to_be_bytes());
        out.extend_from_slice(b"MI");
        let mut body = Vec::new();
        let be = |kind: u32, data: &[u8], body: &mut Vec<u8>| {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(data.len() as u32).to_be_bytes());
            body.extend_from_slice(data);
            while !body.len().is_multiple_of(8) {
                body.push(0);
            }
        };
        be(6, &[0, 0, 0, 9, 0, 0, 0, 0], &mut body);
        be(5, &[0, 0, 0, 1, 0, 0, 0, 2], &mut body);
        be(1, b"y", &mut body);
        be(3, &[0, 5, 255, 254], &mut body);
        be(14, &body.clone(), &mut out);
        let arrays = parse(&out).unwrap();
        assert_eq!(arrays[0].dims, vec![1, 2]);
        assert_eq!(arrays[0].data, MatData::F64(vec![5.0, -2.0]));
    }
}
