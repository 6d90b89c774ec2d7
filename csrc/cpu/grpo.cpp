// CPU kernels of rubricrl::grpo_loss and rubricrl::fused_linear_grpo_loss (docs/algorithms.md §1).
//
// Both produce the loss, its metrics and its gradient in one pass: every term
// of the loss is a function of one token's log-prob (and entropy) times an
// aggregation weight fixed by the mask, so d loss / d logprob is known as soon
// as the log-prob is. The autograd backward (Python) only scales by the
// upstream gradient.
//
// Contract (validated in Python, re-checked cheaply here): token tensors are
// [B, T]; advantages [B] or [B, T]; mask holds 0/1; a masked token is ignored
// entirely (its log-prob, target and entropy are never read into the loss).
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

enum class LossAgg { kTokenMean, kSeqMeanTokenMean, kSeqMeanTokenSum, kSeqMeanTokenSumNorm };
enum class KlType { kK1, kK2, kK3 };

// Sums behind the loss and the metrics: their layout is rubricrl::Sum (csrc/rubricrl_defs.h).
constexpr int kLoss = kSumLoss, kClipped = kSumClipped, kLower = kSumLower, kOldMinusLp = kSumOldMinusLp,
              kKl = kSumKl, kEntropy = kSumEntropy;

struct Options {
  double eps_low, eps_high;
  bool dual_clip;
  double clip_c;
  LossAgg agg;
  double agg_norm;  // <= 0: the local count
  double horizon;   // <= 0: the padded length T
  bool with_ref;
  KlType kl_type;
  double kl_coef;
  bool with_entropy;
  double entropy_coef;
};

// The option names are rubricrl::kLossAggNames / kKlTypeNames (csrc/rubricrl_defs.h), in the
// order of these enums.
static_assert(int(LossAgg::kTokenMean) == kLossAggTokenMean &&
                  int(LossAgg::kSeqMeanTokenMean) == kLossAggSeqMeanTokenMean &&
                  int(LossAgg::kSeqMeanTokenSum) == kLossAggSeqMeanTokenSum &&
                  int(LossAgg::kSeqMeanTokenSumNorm) == kLossAggSeqMeanTokenSumNorm,
              "LossAgg follows rubricrl::LossAggMode");
static_assert(int(KlType::kK1) == kKlTypeK1 && int(KlType::kK2) == kKlTypeK2 && int(KlType::kK3) == kKlTypeK3,
              "KlType follows rubricrl::KlTypeId");

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

Options make_options(double eps_low, double eps_high, c10::optional<double> clip_c,
                     c10::string_view loss_agg, double kl_coef, c10::string_view kl_type,
                     double entropy_coef, c10::optional<double> agg_norm,
                     c10::optional<int64_t> horizon, bool with_ref, bool with_entropy) {
  Options o;
  o.eps_low = eps_low;
  o.eps_high = eps_high;
  o.dual_clip = clip_c.has_value();
  o.clip_c = clip_c.value_or(0.0);
  TORCH_CHECK(!o.dual_clip || o.clip_c > 1.0, "clip_c must be > 1, got ", o.clip_c);
  o.agg = parse_loss_agg(loss_agg);
  o.agg_norm = agg_norm.value_or(0.0);
  o.horizon = horizon.has_value() ? double(*horizon) : 0.0;
  o.with_ref = with_ref;
  o.kl_type = parse_kl_type(kl_type);
  o.kl_coef = kl_coef;
  TORCH_CHECK(kl_coef == 0.0 || with_ref, "kl_coef > 0 needs ref_logprobs");
  o.with_entropy = with_entropy;
  o.entropy_coef = entropy_coef;
  return o;
}

// Flat per-token inputs, all [N] contiguous in the compute type T.
template <typename T>
struct Tokens {
  const T* old;
  const T* adv;
  const T* mask;  // 0/1
  const T* wt;    // aggregation weight, 0 on masked tokens
  const T* ref;   // null without a reference policy
};

// Per-token aggregation weights: wt = mask * row weight (see rubricrl/ops/_torch/grpo.py).
// Returns the number of valid tokens.
template <typename T>
double token_weights(const T* mask, int64_t b, int64_t t, const Options& o, T* wt) {
  std::vector<double> counts(b);
  double n_valid = 0.0, n_seq = 0.0;
  for (int64_t i = 0; i < b; ++i) {
    double c = 0.0;
    for (int64_t j = 0; j < t; ++j) c += double(mask[i * t + j]);
    counts[i] = c;
    n_valid += c;
    n_seq += c > 0.0 ? 1.0 : 0.0;
  }
  double norm = o.agg == LossAgg::kTokenMean ? n_valid : n_seq;
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

// One token: adds its loss and metric terms to acc and writes d loss / d lp (and d entropy).
// Derivatives follow autograd at the kinks: clamp passes the gradient on its bounds, and
// the clipped branch is active only when strictly larger than the unclipped one.
template <typename T>
inline void grpo_token(T lp, T ent, int64_t i, const Tokens<T>& tk, const Options& o, T* g_lp,
                       T* g_ent, double* acc) {
  if (tk.mask[i] == T(0)) {
    *g_lp = T(0);
    if (g_ent != nullptr) *g_ent = T(0);
    return;
  }
  const T clamp = T(kLogRatioClamp);
  const T w = tk.wt[i], a = tk.adv[i], old = tk.old[i];
  const T delta = lp - old;
  const T r = std::exp(std::min(std::max(delta, -clamp), clamp));
  const T dr = std::abs(delta) <= clamp ? r : T(0);
  const T pg1 = -a * r;
  const T pg2 = -a * std::min(std::max(r, T(1.0 - o.eps_low)), T(1.0 + o.eps_high));
  const bool clipped = pg2 > pg1;
  T x = clipped ? pg2 : pg1;
  T dx = clipped ? T(0) : -a * dr;
  bool lower = false;
  if (o.dual_clip && a < T(0)) {
    const T pg3 = -a * T(o.clip_c);
    if (x > pg3) {
      x = pg3;
      dx = T(0);
      lower = true;
    }
  }
  if (o.with_ref) {
    const T d_raw = tk.ref[i] - lp;
    const bool inside = std::abs(d_raw) <= clamp;
    const T d = std::min(std::max(d_raw, -clamp), clamp);
    T k, dk;
    switch (o.kl_type) {
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
    acc[kKl] += double(w * k);
    x += T(o.kl_coef) * k;
    dx += T(o.kl_coef) * dk;
  }
  if (o.with_entropy) {
    acc[kEntropy] += double(w * ent);
    x -= T(o.entropy_coef) * ent;
    if (g_ent != nullptr) *g_ent = T(-o.entropy_coef) * w;
  }
  acc[kLoss] += double(w * x);
  acc[kClipped] += clipped ? 1.0 : 0.0;
  acc[kLower] += lower ? 1.0 : 0.0;
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

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> grpo_loss_impl(
    const at::Tensor& logprobs, const at::Tensor& old_logprobs, const at::Tensor& advantages,
    const at::Tensor& mask, const c10::optional<at::Tensor>& ref_logprobs,
    const c10::optional<at::Tensor>& entropy, const Options& o) {
  const auto st = c10::CppTypeToScalarType<T>::value;
  const int64_t b = logprobs.size(0), t = logprobs.size(1), n = b * t;
  at::Tensor lp = logprobs.to(st).contiguous();
  at::Tensor old = old_logprobs.to(st).contiguous();
  at::Tensor adv = flat_advantages(advantages, b, t, st);
  at::Tensor m = mask.to(st).contiguous();
  at::Tensor ref = o.with_ref ? ref_logprobs->to(st).contiguous() : at::Tensor();
  at::Tensor ent = o.with_entropy ? entropy->to(st).contiguous() : at::Tensor();
  at::Tensor wt = at::empty({b, t}, lp.options());
  const double n_valid = token_weights(m.data_ptr<T>(), b, t, o, wt.data_ptr<T>());
  const Tokens<T> tk{old.data_ptr<T>(), adv.data_ptr<T>(), m.data_ptr<T>(), wt.data_ptr<T>(),
                     o.with_ref ? ref.data_ptr<T>() : nullptr};
  at::Tensor g_lp = at::empty({b, t}, lp.options());
  at::Tensor g_ent = o.with_entropy ? at::empty({b, t}, lp.options()) : at::empty({0}, lp.options());
  const T* lp_p = lp.data_ptr<T>();
  const T* ent_p = o.with_entropy ? ent.data_ptr<T>() : nullptr;
  T* g_lp_p = g_lp.data_ptr<T>();
  T* g_ent_p = o.with_entropy ? g_ent.data_ptr<T>() : nullptr;

  const int64_t blocks = (n + kTokenBlock - 1) / kTokenBlock;
  std::vector<double> part(blocks * kNumSums, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      double* acc = part.data() + blk * kNumSums;
      const int64_t end = std::min(n, (blk + 1) * kTokenBlock);
      for (int64_t i = blk * kTokenBlock; i < end; ++i) {
        grpo_token<T>(lp_p[i], ent_p != nullptr ? ent_p[i] : T(0), i, tk, o, g_lp_p + i,
                      g_ent_p != nullptr ? g_ent_p + i : nullptr, acc);
      }
    }
  });
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
    const at::Tensor& logprobs, const at::Tensor& old_logprobs, const at::Tensor& advantages,
    const at::Tensor& mask, const c10::optional<at::Tensor>& ref_logprobs,
    const c10::optional<at::Tensor>& entropy, double eps_low, double eps_high,
    c10::optional<double> clip_c, c10::string_view loss_agg, double kl_coef, c10::string_view kl_type,
    double entropy_coef, c10::optional<double> agg_norm, c10::optional<int64_t> horizon) {
  TORCH_CHECK(logprobs.dim() == 2, "logprobs must be [B, T]");
  const int64_t b = logprobs.size(0), t = logprobs.size(1);
  check_token_tensor(old_logprobs, b, t, "old_logprobs");
  check_token_tensor(mask, b, t, "mask");
  const bool with_ref = ref_logprobs.has_value() && ref_logprobs->defined();
  const bool with_entropy = entropy.has_value() && entropy->defined();
  if (with_ref) check_token_tensor(*ref_logprobs, b, t, "ref_logprobs");
  if (with_entropy) check_token_tensor(*entropy, b, t, "entropy");
  const Options o = make_options(eps_low, eps_high, clip_c, loss_agg, kl_coef, kl_type, entropy_coef,
                                 agg_norm, horizon, with_ref, with_entropy);
  if (logprobs.scalar_type() == at::kDouble)
    return grpo_loss_impl<double>(logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, o);
  return grpo_loss_impl<float>(logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, o);
}

// Token-chunked fused linear + GRPO loss. Only valid tokens are computed: they
// are gathered chunk by chunk (`chunk` tokens over the whole vocabulary), so
// padding costs nothing. Per chunk, with the logits stored vocabulary-major:
// logits^T = W h^T (+ b) (GEMM 1), the per-token log-sum-exp / log-prob /
// entropy epilogue, the loss terms and coefficients, d logits^T in place,
// d hidden rows = dl W (GEMM 2) and d W += dl^T h (GEMM 3).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_grpo_fwd(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const at::Tensor& targets_in, const at::Tensor& old_logprobs, const at::Tensor& advantages,
    const at::Tensor& mask, const c10::optional<at::Tensor>& ref_logprobs, double temperature,
    double eps_low, double eps_high, c10::optional<double> clip_c, c10::string_view loss_agg,
    double kl_coef, c10::string_view kl_type, double entropy_coef, c10::optional<double> agg_norm,
    c10::optional<int64_t> horizon, bool with_entropy, bool need_d_hidden, bool need_d_weight,
    bool need_d_bias, int64_t chunk_size) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "hidden must be [N, H] and weight [V, H]");
  TORCH_CHECK(mask.dim() == 2, "mask must be [B, T]");
  const int64_t b = mask.size(0), t = mask.size(1), n = hidden.size(0), h = hidden.size(1);
  const int64_t vocab = weight.size(0);
  TORCH_CHECK(n == b * t, "hidden has ", n, " rows but mask is [", b, ", ", t, "]");
  check_token_tensor(old_logprobs, b, t, "old_logprobs");
  const bool with_ref = ref_logprobs.has_value() && ref_logprobs->defined();
  if (with_ref) check_token_tensor(*ref_logprobs, b, t, "ref_logprobs");
  const bool has_bias = bias.has_value() && bias->defined();
  need_d_bias = need_d_bias && has_bias;
  const Options o = make_options(eps_low, eps_high, clip_c, loss_agg, kl_coef, kl_type, entropy_coef,
                                 agg_norm, horizon, with_ref, with_entropy);
  at::Tensor targets = targets_in.contiguous();
  TORCH_CHECK(targets.scalar_type() == at::kLong && targets.numel() == n, "targets must be int64 [N]");

  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor h32 = hidden.to(at::kFloat).contiguous();
  at::Tensor w32 = weight.to(at::kFloat).contiguous();
  at::Tensor b32 = has_bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor old = old_logprobs.to(at::kFloat).contiguous();
  at::Tensor adv = flat_advantages(advantages, b, t, at::kFloat);
  at::Tensor m = mask.to(at::kFloat).contiguous();
  at::Tensor ref = with_ref ? ref_logprobs->to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor wt = at::empty({b, t}, f32);
  const double n_valid = token_weights(m.data_ptr<float>(), b, t, o, wt.data_ptr<float>());
  const Tokens<float> tk{old.data_ptr<float>(), adv.data_ptr<float>(), m.data_ptr<float>(),
                         wt.data_ptr<float>(), with_ref ? ref.data_ptr<float>() : nullptr};

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
        grpo_token<float>(logprob, entropy, valid[c0 + j], tk, o, &g_lp, ent_grad ? &g_ent : nullptr,
                          row_sums.data() + j * kNumSums);
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
