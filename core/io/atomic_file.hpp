#pragma once
// Outputs are atomic: written to a temporary file in the destination directory, fsync'd, and
// renamed into place by commit(). Destroying an uncommitted AtomicFile removes the temporary,
// so a failure (full disk, bad input, cancellation) never leaves a partial output behind.
// The temporary is an unnamed O_TMPFILE inode where the filesystem allows (nothing is left even
// after SIGKILL), else a named ".<name>.tmp.XXXXXX" that SIGINT, SIGTERM and SIGHUP remove before
// the process dies of the signal (exit status 130, 143, 129).
#include <cstdint>
#include <string>
#include <string_view>

namespace squish {

class AtomicFile {
 public:
  // Throws Error(Runtime) "<path>: cannot create output: <reason>".
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);                      // append at the current end
  void pwrite(const void* data, size_t n, uint64_t offset);    // thread-safe positional write
  void write(std::string_view s) { write(s.data(), s.size()); }
  void truncate(uint64_t size);                                // set the final size
  void reserve(uint64_t size);                                 // allocate now (a full disk fails here)
  void commit();                                               // fsync + rename + fsync dir
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return tmp_; }

 private:
  std::string path_, tmp_;
  std::string dir_;  // set when the temporary is an O_TMPFILE inode (named only at commit)
  int fd_ = -1;
  int slot_ = -1;    // entry in the signal handler's list of named temporaries
  uint64_t end_ = 0;
  bool committed_ = false;
};

// Whole-file convenience: the file appears complete or not at all.
void write_file_atomic(const std::string& path, std::string_view content);

// Unlinks the named temporaries of outputs not yet committed (only on filesystems without
// O_TMPFILE are there any). Async-signal-safe: what an executable's SIGINT/SIGTERM/SIGHUP
// handler calls (core/cli/process_startup.cpp); a library never installs handlers itself.
void remove_named_temporaries() noexcept;

}  // namespace squish
