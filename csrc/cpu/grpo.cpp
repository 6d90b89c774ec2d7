// CPU kernels of rubricrl::grpo_loss and rubricrl::fused_linear_grpo_loss (docs/algorithms.md §1, §1b).
// The reference they follow: rubricrl/ops/_torch/grpo.py.
//
// Both produce the loss, its metrics and its gradient in one pass: every term
// of the loss is a function of one token's log-prob (and entropy) times an
// aggregation weight fixed by the mask, so d loss / d logprob is known as soon
// as the log-prob is. The autograd backward (Python) only scales by the
// upstream gradient. The sequence-level policy losses (gspo, gspo_token) use
// each response's ratio exp(mean(lp - old)): grpo_loss computes it in a pass per
// response first, and for gspo spreads the ratio part of the gradient over the
// response afterwards; fused_linear_grpo_loss takes the token-local losses only.
//
// Contract (validated in Python, re-checked cheaply here): token tensors are
// [B, T]; advantages [B] or [B, T]; mask holds 0/1; a masked token is ignored
// entirely (its log-prob, target, entropy and weight are never read into the loss).
// An absent old_logprobs means on-policy: old := lp (ratio 1, gradient through r).
// grpo_loss_fwd computes in double for fp64 log-probs and in float otherwise;
// sums are accumulated in double. linear_grpo_fwd computes in float.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "ops.h"
#include "rubricrl_defs.h"
#include "softmax_epilogue.h"

namespace rubricrl {
namespace cpu {
namespace {

// Tokens per task of the loss loop; fixed, so the sums do not depend on the thread count.
constexpr int64_t kTokenBlock = 4096;
// Responses per task of the per-response passes of the sequence-level losses.
constexpr int64_t kRowGrain = 16;

enum class LossAgg { kTokenMean, kSeqMeanTokenMean, kSeqMeanTokenSum, kSeqMeanTokenSumNorm, kTokenSum };
enum class KlType { kK1, kK2, kK3 };
enum class PolicyLoss { kVanilla, kCispo, kSapo, kGspo, kGspoToken };

// Sums behind the loss and the metrics: their layout is rubricrl::Sum (csrc/rubricrl_defs.h).
constexpr int kLoss = kSumLoss, kClipped = kSumClipped, kLower = kSumLower, kOldMinusLp = kSumOldMinusLp,
              kKl = kSumKl, kEntropy = kSumEntropy;

struct Options {
  PolicyLoss policy;
  bool sequence_level;  // gspo, gspo_token: the ratio is the response's, exp(mean(lp - old))
  double eps_low, eps_high;
  bool dual_clip;
  double clip_c;
  double tau_pos, tau_neg;  // sapo's gate temperatures
  LossAgg agg;
  double agg_norm;  // <= 0: the local count
  double horizon;   // <= 0: the padded length T
  bool with_ref;
  KlType kl_type;
  double kl_coef;
  bool kl_bias_correction;  // the KL estimator times the token ratio
  bool with_entropy;
  double entropy_coef;
};

// The option names are rubricrl::kLossAggNames / kKlTypeNames / kPolicyLossNames
// (csrc/rubricrl_defs.h), in the order of these enums.
static_assert(int(LossAgg::kTokenMean) == kLossAggTokenMean &&
                  int(LossAgg::kSeqMeanTokenMean) == kLossAggSeqMeanTokenMean &&
                  int(LossAgg::kSeqMeanTokenSum) == kLossAggSeqMeanTokenSum &&
                  int(LossAgg::kSeqMeanTokenSumNorm) == kLossAggSeqMeanTokenSumNorm &&
                  int(LossAgg::kTokenSum) == kLossAggTokenSum && kNumLossAggModes == 5,
              "LossAgg follows rubricrl::LossAggMode");
static_assert(int(KlType::kK1) == kKlTypeK1 && int(KlType::kK2) == kKlTypeK2 && int(KlType::kK3) == kKlTypeK3,
              "KlType follows rubricrl::KlTypeId");
static_assert(int(PolicyLoss::kVanilla) == kPolicyLossVanilla && int(PolicyLoss::kCispo) == kPolicyLossCispo &&
                  int(PolicyLoss::kSapo) == kPolicyLossSapo && int(PolicyLoss::kGspo) == kPolicyLossGspo &&
                  int(PolicyLoss::kGspoToken) == kPolicyLossGspoToken && kNumPolicyLosses == 5,
              "PolicyLoss follows rubricrl::PolicyLossId");

LossAgg parse_loss_agg(c10::string_view s) {
  for (int i = 0; i < kNumLossAggModes; ++i)
    if (s == kLossAggNames[i]) return LossAgg(i);
  TORCH_CHECK(false, "unknown loss_agg '", std::string(s), "'");
}

KlType parse_kl_type(c10::string_view s) {
  for (int i = 0; i < kNumKlTypes; ++i)
    if (s == kKlTypeNames[i]) return KlType(i);
  TORCH_CHECK(false, "unknown kl_type '", std::string(s), "'");
}

PolicyLoss parse_policy_loss(c10::string_view s) {
  for (int i = 0; i < kNumPolicyLosses; ++i)
    if (s == kPolicyLossNames[i]) return PolicyLoss(i);
  TORCH_CHECK(false, "unknown policy_loss '", std::string(s), "'");
}

Options make_options(c10::string_view policy_loss, double eps_low, double eps_high, c10::optional<double> clip_c,
                     double tau_pos, double tau_neg, c10::string_view loss_agg, double kl_coef,
                     c10::string_view kl_type, bool kl_bias_correction, double entropy_coef,
                     c10::optional<double> agg_norm, c10::optional<int64_t> horizon, bool with_ref,
                     bool with_entropy) {
  Options o;
  o.policy = parse_policy_loss(policy_loss);
  o.sequence_level = o.policy == PolicyLoss::kGspo || o.policy == PolicyLoss::kGspoToken;
  o.eps_low = eps_low;
  o.eps_high = eps_high;
  TORCH_CHECK(eps_low >= 0.0 && eps_low <= 1.0, "eps_low must be in [0, 1], got ", eps_low);
  TORCH_CHECK(eps_high >= 0.0, "eps_high must be >= 0, got ", eps_high);
  o.dual_clip = clip_c.has_value();
  o.clip_c = clip_c.value_or(0.0);
  TORCH_CHECK(!o.dual_clip || o.clip_c > 1.0, "clip_c must be > 1, got ", o.clip_c);
  TORCH_CHECK(!o.dual_clip || (o.policy != PolicyLoss::kCispo && o.policy != PolicyLoss::kSapo),
              "clip_c (dual clip) applies to the clipped PPO losses, not policy_loss='", std::string(policy_loss),
              "'");
  o.tau_pos = tau_pos;
  o.tau_neg = tau_neg;
  TORCH_CHECK(tau_pos > 0.0 && tau_neg > 0.0, "tau_pos and tau_neg must be > 0, got ", tau_pos, ", ", tau_neg);
  o.agg = parse_loss_agg(loss_agg);
  o.agg_norm = agg_norm.value_or(0.0);
  o.horizon = horizon.has_value() ? double(*horizon) : 0.0;
  o.with_ref = with_ref;
  o.kl_type = parse_kl_type(kl_type);
  o.kl_coef = kl_coef;
  TORCH_CHECK(kl_coef == 0.0 || with_ref, "kl_coef > 0 needs ref_logprobs");
  o.kl_bias_correction = kl_bias_correction;
  TORCH_CHECK(!kl_bias_correction || !o.sequence_level,
              "kl_bias_correction weights the KL by the token ratio; not with policy_loss='",
              std::string(policy_loss), "'");
  o.with_entropy = with_entropy;
  o.entropy_coef = entropy_coef;
  return o;
}

// Flat per-token inputs, all [N] contiguous in the compute type T.
template <typename T>
struct Tokens {
  const T* old;   // null: on-policy (old := lp, detached)
  const T* adv;
  const T* mask;  // 0/1
  const T* wt;    // aggregation weight, 0 on masked tokens
  const T* ref;   // null without a reference policy
  const T* pgw;   // per-token weight of the policy term; null: 1
};

// Per-token aggregation weights: wt = mask * row weight (see row_weights in
// rubricrl/ops/_torch/grpo.py); counts[i] = valid tokens of response i.
// Returns the number of valid tokens.
template <typename T>
double token_weights(const T* mask, int64_t b, int64_t t, const Options& o, T* wt, std::vector<double>& counts) {
  counts.assign(b, 0.0);
  double n_valid = 0.0, n_seq = 0.0;
  for (int64_t i = 0; i < b; ++i) {
    double c = 0.0;
    for (int64_t j = 0; j < t; ++j) c += double(mask[i * t + j]);
    counts[i] = c;
    n_valid += c;
    n_seq += c > 0.0 ? 1.0 : 0.0;
  }
  double norm = o.agg == LossAgg::kTokenMean ? n_valid : o.agg == LossAgg::kTokenSum ? 1.0 : n_seq;
  if (o.agg_norm > 0.0) norm = o.agg_norm;
  const double horizon = o.horizon > 0.0 ? o.horizon : double(t);
  for (int64_t i = 0; i < b; ++i) {
    double den = norm;
    if (o.agg == LossAgg::kSeqMeanTokenMean) den *= counts[i];
    if (o.agg == LossAgg::kSeqMeanTokenSumNorm) den *= horizon;
    const T row_w = (den > 0.0 && counts[i] > 0.0) ? T(1.0 / den) : T(0);
    for (int64_t j = 0; j < t; ++j) wt[i * t + j] = mask[i * t + j] * row_w;
  }
  return n_valid;
}

// r = exp(clamp(log_ratio, +-C)) and d r / d log_ratio (0 outside the clamp).
template <typename T>
inline void clamped_ratio(T log_ratio, T& r, T& dr) {
  const T clamp = T(kLogRatioClamp);
  r = std::exp(std::min(std::max(log_ratio, -clamp), clamp));
  dr = std::abs(log_ratio) <= clamp ? r : T(0);
}

// One token's policy term before any weight (policy_terms in rubricrl/ops/_torch/grpo.py):
// x, its derivative through the ratio's log (the part GSPO spreads over the response), its
// direct derivative in lp (CISPO's log pi), and the clip indicators of the metrics.
template <typename T>
struct PolicyTerm {
  T x, dx_logr, dx_lp;
  bool clipped, lower;
};

template <typename T>
inline PolicyTerm<T> policy_term(T lp, T a, T r, T dr, const Options& o) {
  const T lo = T(1.0 - o.eps_low), hi = T(1.0 + o.eps_high);
  switch (o.policy) {
    case PolicyLoss::kCispo: {
      // -sg(clip(r)) * A * lp: the gradient goes through lp only
      const T c = std::min(std::max(r, lo), hi);
      return {-c * a * lp, T(0), -c * a, c != r, false};
    }
    case PolicyLoss::kSapo: {
      // soft gate sigmoid(tau (r - 1)) * 4 / tau, tau by the advantage's sign; r >= 0 so the
      // sigmoid's argument is >= -tau and 1 + exp(-z) cannot overflow to a NaN
      const T tau = a > T(0) ? T(o.tau_pos) : T(o.tau_neg);
      const T sig = T(1) / (T(1) + std::exp(-tau * (r - T(1))));
      return {-a * sig * T(4) / tau, -a * T(4) * sig * (T(1) - sig) * dr, T(0), false, false};
    }
    default: {  // the clipped PPO objective (vanilla, gspo, gspo_token)
      const T pg1 = -a * r;
      const T pg2 = -a * std::min(std::max(r, lo), hi);
      const bool clipped = pg2 > pg1;
      PolicyTerm<T> p{clipped ? pg2 : pg1, clipped ? T(0) : -a * dr, T(0), clipped, false};
      if (o.dual_clip && a < T(0)) {
        const T pg3 = -a * T(o.clip_c);
        if (p.x > pg3) {
          p.x = pg3;
          p.dx_logr = T(0);
          p.lower = true;
        }
      }
      return p;
    }
  }
}

// The KL estimator k of one token and d k / d lp (d = ref - lp clamped, k3 capped).
template <typename T>
inline void kl_term(T lp, T ref, KlType type, T& k, T& dk) {
  const T clamp = T(kLogRatioClamp);
  const T d_raw = ref - lp;
  const bool inside = std::abs(d_raw) <= clamp;
  const T d = std::min(std::max(d_raw, -clamp), clamp);
  switch (type) {
    case KlType::kK1:
      k = -d;
      dk = inside ? T(1) : T(0);
      break;
    case KlType::kK2:
      k = T(0.5) * d * d;
      dk = inside ? -d : T(0);
      break;
    default: {
      const T e = std::exp(d);
      k = e - d - T(1);
      const bool capped = k > T(kK3Max);
      if (capped) k = T(kK3Max);
      dk = (inside && !capped) ? T(1) - e : T(0);
    }
  }
}

// One token: adds its loss and metric terms to acc and writes d loss / d lp (and d entropy,
// and with g_logr the part of d loss / d lp that flows through the policy ratio's log).
// seq_lr: the token's response log-ratio mean(lp - old), read by the sequence-level losses.
// Derivatives follow autograd at the kinks: clamp passes the gradient on its bounds, and
// the clipped branch is active only when strictly larger than the unclipped one.
template <typename T>
inline void grpo_token(T lp, T ent, T seq_lr, int64_t i, const Tokens<T>& tk, const Options& o, T* g_lp,
                       T* g_ent, T* g_logr, double* acc) {
  if (tk.mask[i] == T(0)) {  // nothing of a masked token is read
    *g_lp = T(0);
    if (g_ent != nullptr) *g_ent = T(0);
    if (g_logr != nullptr) *g_logr = T(0);
    return;
  }
  const T w = tk.wt[i], a = tk.adv[i];
  const T old = tk.old != nullptr ? tk.old[i] : lp;  // on-policy: ratio 1, its gradient flows
  T tok_r, tok_dr;
  clamped_ratio(lp - old, tok_r, tok_dr);
  T r = tok_r, dr = tok_dr;
  if (o.sequence_level) clamped_ratio(seq_lr, r, dr);
  PolicyTerm<T> p = policy_term(lp, a, r, dr, o);
  if (tk.pgw != nullptr) {  // per-token weights multiply the policy term only
    const T pw = tk.pgw[i];
    p.x *= pw;
    p.dx_logr *= pw;
    p.dx_lp *= pw;
  }
  T x = p.x, dx = p.dx_logr + p.dx_lp;
  if (g_logr != nullptr) *g_logr = w * p.dx_logr;
  if (o.with_ref) {
    T k, dk;
    kl_term(lp, tk.ref[i], o.kl_type, k, dk);
    if (o.kl_bias_correction) {  // k * r: the KL estimated under the sampling policy
      dk = dk * tok_r + k * tok_dr;
      k *= tok_r;
    }
    acc[kKl] += double(w * k);
    if (o.kl_coef != 0.0) {
      x += T(o.kl_coef) * k;
      dx += T(o.kl_coef) * dk;
    }
  }
  if (o.with_entropy) {
    acc[kEntropy] += double(w * ent);
    if (o.entropy_coef != 0.0) x -= T(o.entropy_coef) * ent;
    if (g_ent != nullptr) *g_ent = T(-o.entropy_coef) * w;
  }
  acc[kLoss] += double(w * x);
  acc[kClipped] += p.clipped ? 1.0 : 0.0;
  acc[kLower] += p.lower ? 1.0 : 0.0;
  acc[kOldMinusLp] += double(old - lp);
  *g_lp = w * dx;
}

// fp32 metrics [clipfrac, clipfrac_lower, approx_kl, entropy, kl] from the sums.
at::Tensor metrics_tensor(const double* sums, double n_valid) {
  const double n = std::max(n_valid, 1.0);
  at::Tensor m = at::empty({kNumMetrics}, at::kFloat);
  float* p = m.data_ptr<float>();
  p[kMetricClipfrac] = float(sums[kClipped] / n);
  p[kMetricClipfracLower] = float(sums[kLower] / n);
  p[kMetricApproxKl] = float(sums[kOldMinusLp] / n);
  p[kMetricEntropy] = float(sums[kEntropy]);
  p[kMetricKl] = float(sums[kKl]);
  return m;
}

at::Tensor flat_advantages(const at::Tensor& adv, int64_t b, int64_t t, at::ScalarType st) {
  TORCH_CHECK((adv.dim() == 1 && adv.size(0) == b) || (adv.dim() == 2 && adv.size(0) == b && adv.size(1) == t),
              "advantages must be [B] or [B, T] with B = ", b, ", T = ", t);
  at::Tensor a = adv.to(st);
  if (a.dim() == 1) a = a.unsqueeze(1).expand({b, t});
  return a.contiguous();
}

void check_token_tensor(const at::Tensor& x, int64_t b, int64_t t, const char* name) {
  TORCH_CHECK(x.dim() == 2 && x.size(0) == b && x.size(1) == t, name, " must be [B, T] = [", b, ", ", t,
              "]");
}

bool given(const c10::optional<at::Tensor>& x) { return x.has_value() && x->defined(); }

// An optional [B, T] input, checked and contiguous in the compute type; undefined when absent.
at::Tensor optional_tokens(const c10::optional<at::Tensor>& x, int64_t b, int64_t t, const char* name,
                           at::ScalarType st) {
  if (!given(x)) return at::Tensor();
  check_token_tensor(*x, b, t, name);
  return x->to(st).contiguous();
}

template <typename T>
const T* ptr_or_null(const at::Tensor& x) {
  return x.defined() ? x.data_ptr<T>() : nullptr;
}

// The response log-ratio mean(lp - old) over each response's valid tokens, [B] (0 for an
// empty response and on-policy); sequential per response, so deterministic.
template <typename T>
std::vector<T> sequence_log_ratio(const T* lp, const T* old, const T* mask, const std::vector<double>& counts,
                                  int64_t b, int64_t t) {
  std::vector<T> seq(b, T(0));
  if (old == nullptr) return seq;
  at::parallel_for(0, b, kRowGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      double sum = 0.0;
      for (int64_t j = i * t; j < (i + 1) * t; ++j)
        if (mask[j] != T(0)) sum += double(lp[j]) - double(old[j]);
      seq[i] = T(sum / std::max(counts[i], 1.0));
    }
  });
  return seq;
}

// GSPO's ratio exp(mean(lp - old)) is differentiated through the mean: the ratio part of each
// valid token's gradient becomes the response's summed g_logr over its token count.
template <typename T>
void spread_over_responses(T* g_lp, const T* g_logr, const T* mask, const std::vector<double>& counts, int64_t b,
                           int64_t t) {
  at::parallel_for(0, b, kRowGrain, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      double sum = 0.0;
      for (int64_t j = i * t; j < (i + 1) * t; ++j) sum += double(g_logr[j]);  // 0 on masked tokens
      const T share = T(sum / std::max(counts[i], 1.0));
      for (int64_t j = i * t; j < (i + 1) * t; ++j)
        if (mask[j] != T(0)) g_lp[j] = (g_lp[j] - g_logr[j]) + share;
    }
  });
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> grpo_loss_impl(
    const at::Tensor& logprobs, const c10::optional<at::Tensor>& old_logprobs, const at::Tensor& advantages,
    const at::Tensor& mask, const c10::optional<at::Tensor>& ref_logprobs,
    const c10::optional<at::Tensor>& entropy, const c10::optional<at::Tensor>& weights, const Options& o) {
  const auto st = c10::CppTypeToScalarType<T>::value;
  const int64_t b = logprobs.size(0), t = logprobs.size(1), n = b * t;
  at::Tensor lp = logprobs.to(st).contiguous();
  at::Tensor old = optional_tokens(old_logprobs, b, t, "old_logprobs", st);
  at::Tensor adv = flat_advantages(advantages, b, t, st);
  at::Tensor m = mask.to(st).contiguous();
  at::Tensor ref = o.with_ref ? ref_logprobs->to(st).contiguous() : at::Tensor();
  at::Tensor ent = o.with_entropy ? entropy->to(st).contiguous() : at::Tensor();
  at::Tensor pgw = optional_tokens(weights, b, t, "weights", st);
  at::Tensor wt = at::empty({b, t}, lp.options());
  std::vector<double> counts;
  const double n_valid = token_weights(m.data_ptr<T>(), b, t, o, wt.data_ptr<T>(), counts);
  const Tokens<T> tk{ptr_or_null<T>(old), adv.data_ptr<T>(), m.data_ptr<T>(), wt.data_ptr<T>(),
                     ptr_or_null<T>(ref), ptr_or_null<T>(pgw)};
  at::Tensor g_lp = at::empty({b, t}, lp.options());
  at::Tensor g_ent = o.with_entropy ? at::empty({b, t}, lp.options()) : at::empty({0}, lp.options());
  const T* lp_p = lp.data_ptr<T>();
  const T* ent_p = o.with_entropy ? ent.data_ptr<T>() : nullptr;
  T* g_lp_p = g_lp.data_ptr<T>();
  T* g_ent_p = o.with_entropy ? g_ent.data_ptr<T>() : nullptr;
  // Sequence-level losses: each response's log-ratio first; GSPO also keeps each token's
  // ratio part of the gradient, to spread over its response afterwards.
  const std::vector<T> seq_lr =
      o.sequence_level ? sequence_log_ratio(lp_p, tk.old, tk.mask, counts, b, t) : std::vector<T>();
  const bool spread = o.policy == PolicyLoss::kGspo;
  std::vector<T> g_logr(spread ? n : 0);

  const int64_t blocks = (n + kTokenBlock - 1) / kTokenBlock;
  std::vector<double> part(blocks * kNumSums, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      double* acc = part.data() + blk * kNumSums;
      const int64_t end = std::min(n, (blk + 1) * kTokenBlock);
      for (int64_t i = blk * kTokenBlock; i < end; ++i) {
        grpo_token<T>(lp_p[i], ent_p != nullptr ? ent_p[i] : T(0), o.sequence_level ? seq_lr[i / t] : T(0), i,
                      tk, o, g_lp_p + i, g_ent_p != nullptr ? g_ent_p + i : nullptr,
                      spread ? g_logr.data() + i : nullptr, acc);
      }
    }
  });
  if (spread) spread_over_responses(g_lp_p, g_logr.data(), tk.mask, counts, b, t);
  double sums[kNumSums] = {0};
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int k = 0; k < kNumSums; ++k) sums[k] += part[blk * kNumSums + k];
  at::Tensor loss = at::scalar_tensor(sums[kLoss], lp.options());
  return {loss, g_lp, g_ent, metrics_tensor(sums, n_valid)};
}

int64_t token_chunk_rows(int64_t n, int64_t vocab, int64_t chunk_size) {
  int64_t rows = chunk_size > 0
                     ? chunk_size
                     : std::max<int64_t>(kTokenChunkAlign, kDefaultTokenChunkElems / std::max<int64_t>(vocab, 1) /
                                                      kTokenChunkAlign * kTokenChunkAlign);
  return std::max<int64_t>(1, std::min(rows, n));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> grpo_loss_fwd(
    const at::Tensor& logprobs, const c10::optional<at::Tensor>& old_logprobs, const at::Tensor& advantages,
    const at::Tensor& mask, const c10::optional<at::Tensor>& ref_logprobs,
    const c10::optional<at::Tensor>& entropy, const c10::optional<at::Tensor>& weights,
    c10::string_view policy_loss, double eps_low, double eps_high, c10::optional<double> clip_c, double tau_pos,
    double tau_neg, c10::string_view loss_agg, double kl_coef, c10::string_view kl_type, bool kl_bias_correction,
    double entropy_coef, c10::optional<double> agg_norm, c10::optional<int64_t> horizon) {
  TORCH_CHECK(logprobs.dim() == 2, "logprobs must be [B, T]");
  const int64_t b = logprobs.size(0), t = logprobs.size(1);
  if (given(old_logprobs)) check_token_tensor(*old_logprobs, b, t, "old_logprobs");
  check_token_tensor(mask, b, t, "mask");
  const bool with_ref = given(ref_logprobs);
  const bool with_entropy = given(entropy);
  if (with_ref) check_token_tensor(*ref_logprobs, b, t, "ref_logprobs");
  if (with_entropy) check_token_tensor(*entropy, b, t, "entropy");
  if (given(weights)) check_token_tensor(*weights, b, t, "weights");
  const Options o = make_options(policy_loss, eps_low, eps_high, clip_c, tau_pos, tau_neg, loss_agg, kl_coef,
                                 kl_type, kl_bias_correction, entropy_coef, agg_norm, horizon, with_ref,
                                 with_entropy);
  if (logprobs.scalar_type() == at::kDouble)
    return grpo_loss_impl<double>(logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, weights, o);
  return grpo_loss_impl<float>(logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, weights, o);
}

// Token-chunked fused linear + GRPO loss, token-local policy losses (vanilla, cispo, sapo):
// the sequence-level ones need a whole response's log-probs before any token's gradient,
// which a chunk does not hold (the Python API runs them as fused_linear_logprobs + grpo_loss).
// Only valid tokens are computed: they are gathered chunk by chunk (`chunk` tokens over the
// whole vocabulary), so padding costs nothing. Per chunk, with the logits stored vocabulary-major:
// logits^T = W h^T (+ b) (GEMM 1), the per-token log-sum-exp / log-prob /
// entropy epilogue, the loss terms and coefficients, d logits^T in place,
// d hidden rows = dl W (GEMM 2) and d W += dl^T h (GEMM 3).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_grpo_fwd(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const at::Tensor& targets_in, const c10::optional<at::Tensor>& old_logprobs, const at::Tensor& advantages,
    const at::Tensor& mask, const c10::optional<at::Tensor>& ref_logprobs, const c10::optional<at::Tensor>& weights,
    double temperature, c10::string_view policy_loss, double eps_low, double eps_high,
    c10::optional<double> clip_c, double tau_pos, double tau_neg, c10::string_view loss_agg, double kl_coef,
    c10::string_view kl_type, bool kl_bias_correction, double entropy_coef, c10::optional<double> agg_norm,
    c10::optional<int64_t> horizon, bool with_entropy, bool need_d_hidden, bool need_d_weight, bool need_d_bias,
    int64_t chunk_size) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "hidden must be [N, H] and weight [V, H]");
  TORCH_CHECK(mask.dim() == 2, "mask must be [B, T]");
  const int64_t b = mask.size(0), t = mask.size(1), n = hidden.size(0), h = hidden.size(1);
  const int64_t vocab = weight.size(0);
  TORCH_CHECK(n == b * t, "hidden has ", n, " rows but mask is [", b, ", ", t, "]");
  const bool with_ref = given(ref_logprobs);
  const bool has_bias = given(bias);
  need_d_bias = need_d_bias && has_bias;
  const Options o = make_options(policy_loss, eps_low, eps_high, clip_c, tau_pos, tau_neg, loss_agg, kl_coef,
                                 kl_type, kl_bias_correction, entropy_coef, agg_norm, horizon, with_ref,
                                 with_entropy);
  TORCH_CHECK(!o.sequence_level, "fused_linear_grpo_loss: policy_loss='", std::string(policy_loss),
              "' is sequence-level (a response-level ratio) and this op is token-local; "
              "rubricrl.ops.fused_linear_grpo_loss runs it as fused_linear_logprobs + grpo_loss");
  at::Tensor targets = targets_in.contiguous();
  TORCH_CHECK(targets.scalar_type() == at::kLong && targets.numel() == n, "targets must be int64 [N]");

  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor h32 = hidden.to(at::kFloat).contiguous();
  at::Tensor w32 = weight.to(at::kFloat).contiguous();
  at::Tensor b32 = has_bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor old = optional_tokens(old_logprobs, b, t, "old_logprobs", at::kFloat);
  at::Tensor adv = flat_advantages(advantages, b, t, at::kFloat);
  at::Tensor m = mask.to(at::kFloat).contiguous();
  at::Tensor ref = optional_tokens(ref_logprobs, b, t, "ref_logprobs", at::kFloat);
  at::Tensor pgw = optional_tokens(weights, b, t, "weights", at::kFloat);
  at::Tensor wt = at::empty({b, t}, f32);
  std::vector<double> counts;
  const double n_valid = token_weights(m.data_ptr<float>(), b, t, o, wt.data_ptr<float>(), counts);
  const Tokens<float> tk{ptr_or_null<float>(old), adv.data_ptr<float>(), m.data_ptr<float>(),
                         wt.data_ptr<float>(), ptr_or_null<float>(ref), ptr_or_null<float>(pgw)};

  // The valid tokens, in order; their targets must be in [0, V).
  std::vector<int64_t> valid;
  valid.reserve(n);
  const float* m_p = m.data_ptr<float>();
  const int64_t* tgt_p = targets.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (m_p[i] != 0.f) {
      TORCH_CHECK(tgt_p[i] >= 0 && tgt_p[i] < vocab, "target ", tgt_p[i], " of valid token ", i,
                  " is outside [0, ", vocab, ")");
      valid.push_back(i);
    }
  }
  const int64_t nv = int64_t(valid.size());
  const bool any_grad = need_d_hidden || need_d_weight || need_d_bias;
  at::Tensor d_hidden = need_d_hidden ? at::zeros({n, h}, f32) : at::empty({0}, f32);
  // d weight is accumulated by every chunk's GEMM 3; zero-filled first because first-touch
  // page faults inside the GEMM cost several times what a plain fill does.
  at::Tensor d_weight = need_d_weight ? at::zeros({vocab, h}, f32) : at::empty({0}, f32);
  at::Tensor d_bias = need_d_bias ? at::zeros({vocab}, f32) : at::empty({0}, f32);
  double sums[kNumSums] = {0};

  if (nv > 0) {
    const int64_t rows = token_chunk_rows(nv, vocab, chunk_size);
    // Vocabulary-major chunk of logits [V, ld] (see softmax_cols_fused); 16 columns per vector.
    const int64_t ld = (rows + 15) / 16 * 16;
    at::Tensor index = at::from_blob(valid.data(), {nv}, at::kLong);
    at::Tensor logits_buf = at::empty({vocab, ld}, f32);
    at::Tensor h_buf = at::empty({rows, h}, f32);
    at::Tensor dh_buf = need_d_hidden ? at::empty({rows, h}, f32) : at::Tensor();
    // Per token: lse, log-prob, entropy, and d logits = scale * x + onehot * 1[v = target].
    at::Tensor row_buf = at::empty({5, rows}, f32);
    float* lse = row_buf[0].data_ptr<float>();
    float *lp = row_buf[1].data_ptr<float>(), *ent = row_buf[2].data_ptr<float>();
    at::Tensor tgt_t = at::empty({rows}, at::kLong);
    int64_t* tgt = tgt_t.data_ptr<int64_t>();
    std::vector<double> row_sums(rows * kNumSums);
    const float inv_t = float(1.0 / temperature);
    const bool ent_grad = with_entropy && o.entropy_coef != 0.0;

    for (int64_t c0 = 0; c0 < nv; c0 += rows) {
      const int64_t r = std::min(rows, nv - c0);
      at::Tensor idx = index.narrow(0, c0, r);
      at::Tensor hc = h_buf.narrow(0, 0, r);
      at::index_select_out(hc, h32, 0, idx);
      // x^T = W h_c^T (+ b): the chunk's logits, token j in column j
      at::Tensor xt = logits_buf.narrow(1, 0, r);
      if (has_bias) {
        at::addmm_out(xt, b32.unsqueeze(1), w32, hc.t());
      } else {
        at::mm_out(xt, w32, hc.t());
      }
      // Scratch columns up to the next vector: finite, so no NaN arithmetic in them.
      const int64_t r16 = (r + 15) / 16 * 16;
      if (r16 > r) logits_buf.narrow(1, r, r16 - r).zero_();
      for (int64_t j = 0; j < r; ++j) tgt[j] = tgt_p[valid[c0 + j]];
      at::Tensor scale = row_buf[3].narrow(0, 0, r), onehot = row_buf[4].narrow(0, 0, r);
      at::Tensor tgt_c = tgt_t.narrow(0, 0, r);
      std::fill(row_sums.begin(), row_sums.end(), 0.0);
      // Per token: log-prob and entropy, the loss terms and d loss / d lp, d logits in place.
      const RowCoefFn coef = [&](int64_t j, float logprob, float entropy, float& g_lp, float& g_ent) {
        grpo_token<float>(logprob, entropy, 0.f, valid[c0 + j], tk, o, &g_lp, ent_grad ? &g_ent : nullptr,
                          nullptr, row_sums.data() + j * kNumSums);
      };
      softmax_cols_fused(logits_buf.data_ptr<float>(), ld, r, vocab, tgt, inv_t, with_entropy, any_grad, ent_grad,
                         coef, lse, lp, with_entropy ? ent : nullptr, scale.data_ptr<float>(),
                         onehot.data_ptr<float>());
      for (int64_t j = 0; j < r; ++j)  // in token order: the sums do not depend on the thread count
        for (int k = 0; k < kNumSums; ++k) sums[k] += row_sums[j * kNumSums + k];
      if (!any_grad) continue;
      // d logits^T = x diag(scale) + the one-hot terms: the scale goes onto the small operand
      // of each GEMM and the one-hot terms are rank-one row updates.
      if (need_d_hidden) {
        at::Tensor dh = dh_buf.narrow(0, 0, r);
        at::mm_out(dh, xt.t(), w32);
        dh.mul_(scale.unsqueeze(1)).add_(at::index_select(w32, 0, tgt_c).mul_(onehot.unsqueeze(1)));
        d_hidden.index_copy_(0, idx, dh);
      }
      if (need_d_weight) {
        d_weight.addmm_(xt, hc * scale.unsqueeze(1));
        d_weight.index_add_(0, tgt_c, hc * onehot.unsqueeze(1));
      }
      if (need_d_bias) d_bias.add_(at::mv(xt, scale)).index_add_(0, tgt_c, onehot);
    }
  }
  at::Tensor loss = at::scalar_tensor(sums[kLoss], f32);
  return {loss, metrics_tensor(sums, n_valid),
          need_d_hidden ? d_hidden.to(hidden.scalar_type()) : d_hidden,
          need_d_weight ? d_weight.to(weight.scalar_type()) : d_weight,
          need_d_bias ? d_bias.to(bias->scalar_type()) : d_bias};
}

}  // namespace cpu
}  // namespace rubricrl
