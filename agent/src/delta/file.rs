//! Reading and writing delta files: gzip-compressed JSON lines, written to a temporary name
//! and renamed into place when complete, so a file under its final name is always whole.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use super::{DeltaError, FORMAT, Header, Line, VERSION};
use crate::archive::ArchiveError;

/// Writes a delta file line by line.
pub struct DeltaWriter {
    path: PathBuf,
    partial: PathBuf,
    out: GzEncoder<BufWriter<File>>,
    units: u64,
    rows: u64,
}

impl DeltaWriter {
    /// Starts `path` (which must not exist) with its header.
    pub fn create(path: &Path, header: &Header) -> Result<Self, DeltaError> {
        if path.exists() {
            return Err(ArchiveError::Exists {
                path: path.to_owned(),
            }
            .into());
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = File::create(&partial).map_err(io(format!("creating {}", partial.display())))?;
        let mut writer = DeltaWriter {
            path: path.to_owned(),
            partial,
            out: GzEncoder::new(BufWriter::with_capacity(1 << 16, file), Compression::fast()),
            units: 0,
            rows: 0,
        };
        writer.write(&Line::Header(header.clone()))?;
        Ok(writer)
    }

    /// Appends a line.
    pub fn write(&mut self, line: &Line) -> Result<(), DeltaError> {
        match line {
            Line::Unit(_) => self.units += 1,
            Line::Row { .. } => self.rows += 1,
            _ => {}
        }
        serde_json::to_writer(&mut self.out, line).map_err(|err| {
            io(format!("writing {}", self.partial.display()))(std::io::Error::other(err))
        })?;
        self.out
            .write_all(b"\n")
            .map_err(io(format!("writing {}", self.partial.display())))
    }

    /// Writes the end line, flushes to disk and gives the file its name.
    pub fn finish(mut self) -> Result<PathBuf, DeltaError> {
        let end = Line::End {
            units: self.units,
            rows: self.rows,
        };
        self.write(&end)?;
        let action = format!("writing {}", self.partial.display());
        let buffered = self.out.finish().map_err(io(action.clone()))?;
        let file = buffered
            .into_inner()
            .map_err(|err| io(action.clone())(err.into_error()))?;
        file.sync_all().map_err(io(action))?;
        std::fs::rename(&self.partial, &self.path)
            .map_err(io(format!("naming {}", self.path.display())))?;
        Ok(self.path)
    }
}

/// Reads a delta file line by line, checking its framing: the header first, every unit's
/// row count, and the end line last.
pub struct DeltaReader {
    path: PathBuf,
    lines: std::io::Lines<BufReader<GzDecoder<BufReader<File>>>>,
    number: u64,
    header: Header,
    ended: bool,
}

impl DeltaReader {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, DeltaError> {
        let file = File::open(path).map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                DeltaError::Archive(ArchiveError::Missing {
                    path: path.to_owned(),
                })
            } else {
                io(format!("reading {}", path.display()))(err)
            }
        })?;
        let decoder = GzDecoder::new(BufReader::with_capacity(1 << 16, file));
        let mut reader = DeltaReader {
            path: path.to_owned(),
            lines: BufReader::with_capacity(1 << 16, decoder).lines(),
            number: 0,
            header: placeholder_header(),
            ended: false,
        };
        match reader.next_raw()? {
            Some(Line::Header(header)) => {
                if header.format == FORMAT && header.version < VERSION {
                    return Err(reader.malformed(format!(
                        "it is version {} of the delta format (rows as JSON), written by an earlier \
                         agent; this agent reads version {VERSION} (rows in COPY text): export the \
                         delta again with this agent, against the same baseline",
                        header.version
                    )));
                }
                if header.format != FORMAT || header.version != VERSION {
                    return Err(reader.malformed(format!(
                        "it says format `{}` version {}; this agent reads `{FORMAT}` version {VERSION}",
                        header.format, header.version
                    )));
                }
                reader.header = header;
                Ok(reader)
            }
            _ => Err(reader.malformed("it does not start with a delta header".into())),
        }
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next line after the header; `None` after the end line.
    pub fn next_line(&mut self) -> Result<Option<Line>, DeltaError> {
        if self.ended {
            return Ok(None);
        }
        match self.next_raw()? {
            None => Err(self.malformed("it ends without its end line (truncated?)".into())),
            Some(Line::Header(_)) => Err(self.malformed("a second header".into())),
            Some(Line::End { .. }) => {
                self.ended = true;
                if self.next_raw()?.is_some() {
                    return Err(self.malformed("lines after the end line".into()));
                }
                Ok(None)
            }
            Some(line) => Ok(Some(line)),
        }
    }

    /// An error about this file at the current line.
    pub fn malformed(&self, reason: String) -> DeltaError {
        DeltaError::Malformed {
            path: self.path.clone(),
            reason: format!("line {}: {reason}", self.number),
        }
    }

    fn next_raw(&mut self) -> Result<Option<Line>, DeltaError> {
        let Some(text) = self.lines.next() else {
            return Ok(None);
        };
        self.number += 1;
        let text = text.map_err(|err| self.malformed(format!("cannot be decompressed: {err}")))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|err| self.malformed(err.to_string()))
    }
}

fn placeholder_header() -> Header {
    Header {
        format: String::new(),
        version: 0,
        exported_at: String::new(),
        source_database: String::new(),
        baseline: String::new(),
        shared_schema: String::new(),
        tenant_column: String::new(),
        tenants_table: String::new(),
        tenants_key: String::new(),
        tables: Vec::new(),
        tenants: Vec::new(),
        units: 0,
    }
}

fn io(action: String) -> impl FnOnce(std::io::Error) -> DeltaError {
    move |source| DeltaError::Archive(ArchiveError::Io { action, source })
}

#[cfg(test)]
mod tests {
    use super::super::{Op, RowText, UnitHeader};
    use super::*;

    fn header() -> Header {
        Header {
            format: FORMAT.into(),
            version: VERSION,
            tenants: vec![1],
            ..placeholder_header()
        }
    }

    #[test]
    fn a_written_file_reads_back_line_for_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl.gz");
        let unit = Line::Unit(UnitHeader {
            tenant: 1,
            table: 0,
            inserted: 1,
            updated: 0,
            deleted: 1,
            rows: 3,
            fingerprint: "42".into(),
        });
        let rows = [
            Line::Row {
                op: Op::Insert,
                key: 7,
                row: Some(RowText("7\tit's \"quoted\"\\n\t0.2240\t\\N".into())),
            },
            Line::Row {
                op: Op::Delete,
                key: 2,
                row: None,
            },
        ];
        let mut w = DeltaWriter::create(&path, &header()).unwrap();
        w.write(&unit).unwrap();
        for r in &rows {
            w.write(r).unwrap();
        }
        assert_eq!(w.finish().unwrap(), path);
        assert!(
            DeltaWriter::create(&path, &header()).is_err(),
            "never overwritten"
        );

        let mut r = DeltaReader::open(&path).unwrap();
        assert_eq!(r.header(), &header());
        assert_eq!(r.next_line().unwrap(), Some(unit));
        for row in rows {
            assert_eq!(r.next_line().unwrap(), Some(row));
        }
        assert_eq!(r.next_line().unwrap(), None);
    }

    #[test]
    fn a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl.gz");
        let mut w = DeltaWriter::create(&path, &header()).unwrap();
        w.write(&Line::Row {
            op: Op::Delete,
            key: 1,
            row: None,
        })
        .unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.jsonl.gz");
        // Re-compress the text without its end line: whole gzip, missing framing.
        let text = {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut GzDecoder::new(&bytes[..]), &mut s).unwrap();
            s
        };
        let without_end: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(without_end.as_bytes()).unwrap();
        std::fs::write(&cut, enc.finish().unwrap()).unwrap();
        let mut r = DeltaReader::open(&cut).unwrap();
        r.next_line().unwrap();
        let err = r.next_line().unwrap_err().to_string();
        assert!(err.contains("without its end line"), "{err}");

        // Bytes cut off mid-stream fail to decompress rather than read as fewer lines.
        let half = dir.path().join("half.jsonl.gz");
        std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
        let err = match DeltaReader::open(&half) {
            Err(e) => e.to_string(),
            Ok(mut r) => loop {
                match r.next_line() {
                    Err(e) => break e.to_string(),
                    Ok(None) => panic!("a half file read to its end"),
                    Ok(Some(_)) => {}
                }
            },
        };
        assert!(err.contains("not a readable delta"), "{err}");
    }

    #[test]
    fn another_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl.gz");
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(b"{\"hello\": 1}\n").unwrap();
        std::fs::write(&path, enc.finish().unwrap()).unwrap();
        let err = DeltaReader::open(&path).err().unwrap().to_string();
        assert!(err.contains("line 1"), "{err}");
        // A file of the previous version is refused with what to do about it.
        let old = dir.path().join("v1.jsonl.gz");
        let w = DeltaWriter::create(
            &old,
            &Header {
                version: 1,
                ..header()
            },
        )
        .unwrap();
        w.finish().unwrap();
        let err = DeltaReader::open(&old).err().unwrap().to_string();
        assert!(
            err.contains("version 1") && err.contains("export the delta again"),
            "{err}"
        );

        let missing = DeltaReader::open(&dir.path().join("nope"))
            .err()
            .unwrap()
            .to_string();
        assert!(missing.contains("does not exist"), "{missing}");
    }
}
