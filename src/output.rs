//! Printing to stdout when stdout may be a pipe whose reader leaves early
//! (`meshroute crds | head`). Rust ignores SIGPIPE, so such a write fails with `BrokenPipe`
//! and `print!` panics; here a gone reader simply ends the output, quietly.

use std::io;

/// What became of a write to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Printed {
    /// Everything was written and flushed.
    All,
    /// The reader closed the pipe: stop printing, say nothing, exit as planned.
    ReaderGone,
}

/// Write `text` to stdout and flush. `Err` only for real failures (disk full...), never for a
/// closed pipe.
pub fn print(text: &str) -> io::Result<Printed> {
    write_all(&mut io::stdout().lock(), text)
}

fn write_all(out: &mut impl io::Write, text: &str) -> io::Result<Printed> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(Printed::All),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Printed::ReaderGone),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Closed;

    impl io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn closed_pipe_is_not_an_error() {
        assert_eq!(write_all(&mut Closed, "x").unwrap(), Printed::ReaderGone);
        assert_eq!(write_all(&mut Vec::new(), "x").unwrap(), Printed::All);
    }
}
