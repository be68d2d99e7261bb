;; Example Wasm module (ABI 1, see plugins/src/wasm_stage.rs or the README): latency- and
;; quota-aware weighting.
;;   new weight = configured weight * 1000 / (latency EWMA ms + 100), at least 1,
;;   and 0 for a key whose project has no requests left this minute (when a limit is set).
;; pipeline: - wasm: { module: scripts/weights.wat, fuel: 100000 }
(module
  (memory (export "memory") 2)
  (func (export "gp_abi_version") (result i32) (i32.const 1))
  (func (export "gp_buffer") (param $size i32) (result i32)
    (local $need i32)
    (local.set $need
      (i32.sub (i32.add (i32.const 65536) (local.get $size))
               (i32.mul (memory.size) (i32.const 65536))))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then (drop (memory.grow
        (i32.add (i32.div_u (local.get $need) (i32.const 65536)) (i32.const 1))))))
    (i32.const 65536))
  (func (export "weigh") (param $len i32) (param $n i32) (result i32)
    (local $i i32) (local $c i32) (local $w f64)
    (local.set $c (i32.load (i32.const 65656)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        ;; flags bit 0: a requests-per-minute limit is set; +40: requests left this minute
        (if (i32.and
              (i32.and (i32.load (i32.add (local.get $c) (i32.const 28))) (i32.const 1))
              (i64.eqz (i64.load (i32.add (local.get $c) (i32.const 40)))))
          (then (i32.store (i32.add (local.get $c) (i32.const 16)) (i32.const 0)))
          (else
            (local.set $w
              (f64.div
                (f64.mul (f64.convert_i32_u (i32.load (i32.add (local.get $c) (i32.const 16))))
                         (f64.const 1000))
                (f64.add (f64.load (i32.add (local.get $c) (i32.const 32))) (f64.const 100))))
            (if (f64.lt (local.get $w) (f64.const 1)) (then (local.set $w (f64.const 1))))
            (i32.store (i32.add (local.get $c) (i32.const 16))
                       (i32.trunc_sat_f64_u (local.get $w)))))
        (local.set $c (i32.add (local.get $c) (i32.const 64)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const -2))
)
