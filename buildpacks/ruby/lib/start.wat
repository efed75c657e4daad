;; Skiff's entry points for ruby.wasm, merged into it at build time (module "skiff").
;;
;; `wizer.initialize` runs once, when the app is built: it boots the interpreter and evaluates
;; Skiff's Rack server side (lib/skiff_rack.rb, pasted into the $boot segment), which loads the
;; app's config.ru. wizer then snapshots the memory, so a request starts with Ruby booted.
;;
;; `_start` runs per request (a CGI program): it reads the environment through WASI itself,
;; because the C library's copy was taken at snapshot time, and hands it to
;; SkiffRack.serve hex-encoded, so no byte of a header or config var needs Ruby escaping.
(module
  (import "ruby" "memory" (memory 0))
  (import "ruby" "_initialize" (func $ruby_initialize))
  (import "ruby" "cabi_realloc" (func $alloc (param i32 i32 i32 i32) (result i32)))
  (import "ruby" "ruby-init: func(args: list<string>) -> ()" (func $ruby_init (param i32 i32)))
  (import "ruby" "rb-eval-string-protect: func(str: string) -> tuple<handle<rb-abi-value>, s32>"
    (func $eval (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))

  ;; The interpreter's argv; every string carries its NUL, as ruby-init expects C strings.
  (data $args "ruby\00-EUTF-8\00-e_=0\00")
  (data $boot "__SKIFF_BOOT__")
  ;; 18 bytes, then the hex digits, then 15 bytes (with the NUL).
  (data $prefix "SkiffRack.serve([\"")
  (data $suffix "\"].pack(\"H*\"))\00")

  ;; Set by the initializer, so a snapshot taken after it says Ruby is up. A module that was not
  ;; pre-initialised (SKIFF_RUBY_PREINIT=off) boots Ruby at the start of every request.
  (global $booted (mut i32) (i32.const 0))

  ;; Evaluates the C string at src; a Ruby exception that escaped is a failed run.
  (func $run (param $src i32) (param $len i32)
    (if (i32.load offset=4 (call $eval (local.get $src) (local.get $len)))
      (then (call $proc_exit (i32.const 1)))))

  (func $new (param $size i32) (result i32)
    (call $alloc (i32.const 0) (i32.const 0) (i32.const 4) (local.get $size)))

  (func $boot (export "wizer.initialize")
    (local $strs i32) (local $list i32) (local $src i32)
    (global.set $booted (i32.const 1))
    (call $ruby_initialize)
    (local.set $strs (call $new (i32.const 19)))
    (memory.init $args (local.get $strs) (i32.const 0) (i32.const 19))
    (local.set $list (call $new (i32.const 24)))
    (i32.store offset=0 (local.get $list) (local.get $strs))
    (i32.store offset=4 (local.get $list) (i32.const 5))
    (i32.store offset=8 (local.get $list) (i32.add (local.get $strs) (i32.const 5)))
    (i32.store offset=12 (local.get $list) (i32.const 8))
    (i32.store offset=16 (local.get $list) (i32.add (local.get $strs) (i32.const 13)))
    (i32.store offset=20 (local.get $list) (i32.const 6))
    (call $ruby_init (local.get $list) (i32.const 3))
    (local.set $src (call $new (i32.const __SKIFF_BOOT_LEN__)))
    (memory.init $boot (local.get $src) (i32.const 0) (i32.const __SKIFF_BOOT_LEN__))
    (call $run (local.get $src) (i32.const __SKIFF_BOOT_LEN__)))

  (func $hex (param $nibble i32) (result i32)
    (select
      (i32.add (local.get $nibble) (i32.const 48))
      (i32.add (local.get $nibble) (i32.const 87))
      (i32.lt_u (local.get $nibble) (i32.const 10))))

  (func (export "_start")
    (local $sizes i32) (local $size i32) (local $buf i32) (local $src i32) (local $len i32)
    (local $i i32) (local $out i32) (local $byte i32)
    (if (i32.eqz (global.get $booted)) (then (call $boot)))
    (local.set $sizes (call $new (i32.const 8)))
    (if (call $environ_sizes_get (local.get $sizes) (i32.add (local.get $sizes) (i32.const 4)))
      (then (call $proc_exit (i32.const 71))))
    (local.set $size (i32.load offset=4 (local.get $sizes)))
    (local.set $buf (call $new (i32.add (local.get $size) (i32.const 1))))
    (if (call $environ_get
          (call $new (i32.add (i32.shl (i32.load (local.get $sizes)) (i32.const 2)) (i32.const 4)))
          (local.get $buf))
      (then (call $proc_exit (i32.const 71))))
    (local.set $len (i32.add (i32.shl (local.get $size) (i32.const 1)) (i32.const 33)))
    (local.set $src (call $new (local.get $len)))
    (memory.init $prefix (local.get $src) (i32.const 0) (i32.const 18))
    (local.set $out (i32.add (local.get $src) (i32.const 18)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $size)))
        (local.set $byte (i32.load8_u (i32.add (local.get $buf) (local.get $i))))
        (i32.store8 (local.get $out) (call $hex (i32.shr_u (local.get $byte) (i32.const 4))))
        (i32.store8 offset=1 (local.get $out) (call $hex (i32.and (local.get $byte) (i32.const 15))))
        (local.set $out (i32.add (local.get $out) (i32.const 2)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (memory.init $suffix (local.get $out) (i32.const 0) (i32.const 15))
    (call $run (local.get $src) (local.get $len)))
)
