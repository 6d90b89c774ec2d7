// A C++ trainer's view of rubricrl: call the registered ops by name through the
// dispatcher (no Python) and compare with ATen's materialised log_softmax.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <iostream>

int main() {
  at::manual_seed(0);
  const int64_t n = 37, h = 16, v = 1000;
  at::Tensor hidden = at::randn({n, h});
  at::Tensor weight = at::randn({v, h});
  at::Tensor targets = at::randint(0, v, {n}, at::kLong);

  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("rubricrl::fused_linear_logprobs", "")
                .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                    const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                    const at::Tensor&, double, bool, int64_t)>();
  auto [logprobs, entropy, lse] = op.call(hidden, weight, c10::nullopt, targets, 0.7, true, 128);

  at::Tensor logp = at::log_softmax(at::mm(hidden, weight.t()).to(at::kDouble) / 0.7, 1);
  at::Tensor want_lp = logp.gather(1, targets.unsqueeze(1)).squeeze(1);
  at::Tensor want_ent = -(logp.exp() * logp).sum(1);
  const double err_lp = (logprobs.to(at::kDouble) - want_lp).abs().max().item<double>();
  const double err_ent = (entropy.to(at::kDouble) - want_ent).abs().max().item<double>();
  std::cout << "max |logprob error| " << err_lp << ", max |entropy error| " << err_ent << "\n";
  return (err_lp < 1e-4 && err_ent < 1e-4) ? 0 : 1;
}
