#pragma once
// Admission by bytes for a source's messages, on top of the flow graph's count limiter.
#include <algorithm>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>

namespace squish {

// Byte-weighted admission on top of a source's count limiter of `slots`: a message holds
// ceil(bytes / unit) slots (at least the one the limiter counts when it admits it, at most all).
// The rest are taken when it is produced, as far as they are free, and otherwise from the next
// slots other messages give back, so a large tensor keeps later ones out until it has gone.
// The limiter's count is only moved within [0, slots]: oneTBB clamps anything beyond, which
// would lose the account. `upper_` bounds that count from above (a produced message may not
// be admitted yet), so taking up to slots - 1 - upper_ can never be clamped.
class FlightBudget {
 public:
  explicit FlightBudget(size_t slots) : slots_(slots) {}
  void set_unit(uint64_t unit_bytes) {
    std::lock_guard lock(mu_);
    unit_ = unit_bytes;
  }
  struct Share {
    size_t weight = 1, held = 1;
  };
  // For a message just produced: its share, and in `take_now` the slots to take from the
  // limiter now (a negative decrement).
  std::shared_ptr<Share> admit(uint64_t bytes, size_t& take_now) {
    std::lock_guard lock(mu_);
    auto s = std::make_shared<Share>();
    if (unit_ > 0) s->weight = static_cast<size_t>(std::clamp<uint64_t>((bytes + unit_ - 1) / unit_, 1, slots_));
    take_now = std::min(s->weight - 1, upper_ + 1 < slots_ ? slots_ - 1 - upper_ : 0);
    s->held += take_now;
    upper_ += s->held;
    if (s->held < s->weight) debtors_.push_back(s);
    return s;
  }
  // When a message dies: the slots to give back to the limiter, after paying what older
  // messages still lack.
  size_t release(const std::shared_ptr<Share>& s) {
    std::lock_guard lock(mu_);
    std::erase(debtors_, s);
    upper_ -= s->held;
    size_t freed = s->held;
    while (freed > 0 && !debtors_.empty()) {
      Share& d = *debtors_.front();
      const size_t pay = std::min(freed, d.weight - d.held);
      d.held += pay, upper_ += pay, freed -= pay;
      if (d.held == d.weight) debtors_.pop_front();
    }
    return freed;
  }

 private:
  std::mutex mu_;
  const size_t slots_;
  uint64_t unit_ = 0;
  size_t upper_ = 0;  // slots held by live messages: at least the limiter's count
  std::deque<std::shared_ptr<Share>> debtors_;  // live messages holding fewer slots than they weigh, oldest first
};

}  // namespace squish
