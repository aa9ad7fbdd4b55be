#pragma once
// A set of outputs that appears together (the score stage's folder: scores, imatrix, moments…).
// Files are written into a staging folder on the destination's filesystem; commit() moves them
// into place. Destroying an uncommitted StagedDir removes the staging folder, so a failure on the
// last artifact leaves nothing of the set behind.
//
//  - Destination absent: the staging folder is its sibling ".<name>.staging-<pid>-<n>", and commit
//    renames it onto the destination — one atomic step.
//  - Destination present (it may hold other outputs, e.g. a plan's measurements): staging is
//    "<dest>/.staging-<pid>-<n>"; commit first removes the `markers` (the files readers trust the
//    set by, such as scores.json), moves every other entry over its old version, then the markers.
//    A crash mid-commit therefore leaves no marker, and readers score again.
// A staging folder left by a killed process (its pid no longer runs) is removed by the next
// StagedDir for the same destination.
#include <string>
#include <vector>

namespace squish {

class StagedDir {
 public:
  // Throws Error(Runtime) "<dest>: cannot create output folder: <reason>".
  explicit StagedDir(std::string dest);
  ~StagedDir();
  StagedDir(const StagedDir&) = delete;
  StagedDir& operator=(const StagedDir&) = delete;

  const std::string& path() const { return staging_; }  // write the set here
  const std::string& dest() const { return dest_; }
  void commit(const std::vector<std::string>& markers = {});

 private:
  std::string dest_, staging_;
  bool into_existing_ = false, committed_ = false;
};

}  // namespace squish
