//! tracefs: mounting it when the system has not, and reading the `format`
//! files whose field offsets the fallback object is given at load time.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("cannot mount tracefs on /sys/kernel/tracing: {0}; mount it yourself (mount -t tracefs tracefs /sys/kernel/tracing)")]
    Mount(std::io::Error),
    #[error("tracepoint {0}/{1}: cannot read its format ({2}); is CONFIG_FTRACE_SYSCALLS / the tracepoint available?")]
    Format(String, String, std::io::Error),
    #[error("tracepoint {0}/{1} has no field '{2}'")]
    NoField(String, String, String),
}

const ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

pub fn root() -> Option<PathBuf> {
    ROOTS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").exists())
}

/// Whether this kernel has the tracepoint `category/name`; None when tracefs
/// is not mounted (nothing can be said).
pub fn has_event(category: &str, name: &str) -> Option<bool> {
    root().map(|r| r.join("events").join(category).join(name).exists())
}

/// Make sure tracefs is mounted where aya looks for it.
pub fn ensure_mounted() -> Result<(), TracefsError> {
    if root().is_some() {
        return Ok(());
    }
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: constant NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::Mount(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs on /sys/kernel/tracing");
    Ok(())
}

/// A tracepoint's fields: name -> (offset, size).
pub struct Format {
    category: String,
    event: String,
    fields: Vec<(String, u32, u32)>,
}

impl Format {
    pub fn read(category: &str, event: &str) -> Result<Self, TracefsError> {
        let root = root().unwrap_or_else(|| PathBuf::from(ROOTS[0]));
        let path = root
            .join("events")
            .join(category)
            .join(event)
            .join("format");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| TracefsError::Format(category.into(), event.into(), e))?;
        Ok(Self::parse(category, event, &text))
    }

    pub fn parse(category: &str, event: &str, text: &str) -> Self {
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut decl = "";
            let mut offset = None;
            let mut size = None;
            for part in rest.split(';') {
                let part = part.trim();
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                } else if decl.is_empty() {
                    decl = part;
                }
            }
            // "const char * filename", "__data_loc char[] filename", "char comm[16]"
            let name = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .unwrap_or("")
                .split('[')
                .next()
                .unwrap_or("");
            if let (Some(o), Some(s)) = (offset, size) {
                fields.push((name.to_string(), o, s));
            }
        }
        Self {
            category: category.into(),
            event: event.into(),
            fields,
        }
    }

    pub fn offset(&self, field: &str) -> Result<u32, TracefsError> {
        self.fields
            .iter()
            .find(|(n, _, _)| n == field)
            .map(|(_, o, _)| *o)
            .ok_or_else(|| {
                TracefsError::NoField(self.category.clone(), self.event.clone(), field.into())
            })
    }

    pub fn has(&self, field: &str) -> bool {
        self.fields.iter().any(|(n, _, _)| n == field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_OLD: &str = "name: sched_process_fork\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
    const FORK_NEW: &str = "\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";

    #[test]
    fn layouts_of_different_kernels() {
        let old = Format::parse("sched", "sched_process_fork", FORK_OLD);
        assert_eq!(old.offset("parent_pid").unwrap(), 24);
        assert_eq!(old.offset("child_pid").unwrap(), 44);
        assert_eq!(old.offset("parent_comm").unwrap(), 8);
        let new = Format::parse("sched", "sched_process_fork", FORK_NEW);
        assert_eq!(new.offset("parent_pid").unwrap(), 12);
        assert_eq!(new.offset("child_pid").unwrap(), 20);
        assert!(new.offset("nope").is_err());
        assert!(!new.has("group_dead"));
    }

    #[test]
    fn pointer_fields() {
        let f = Format::parse(
            "syscalls",
            "sys_enter_execve",
            "\tfield:const char *const * argv;\toffset:24;\tsize:8;\tsigned:0;\n",
        );
        assert_eq!(f.offset("argv").unwrap(), 24);
    }
}
