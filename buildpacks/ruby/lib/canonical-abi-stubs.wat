;; The handle table ruby.wasm expects from its host (module "canonical_abi"). Skiff's start
;; code is the only caller of the Ruby API, so a handle is the raw value itself.
(module
  (func (export "resource_drop_js-abi-value") (param i32))
  (func (export "resource_new_rb-abi-value") (param i32) (result i32) local.get 0)
  (func (export "resource_get_rb-abi-value") (param i32) (result i32) local.get 0)
)
