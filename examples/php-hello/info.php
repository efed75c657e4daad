<?php
// A script of its own: /info.php runs this file instead of the front controller.
header('Content-Type: text/plain; charset=utf-8');
echo 'PHP ', PHP_VERSION, ' (', PHP_SAPI, ")\n";
echo 'extensions: ', implode(' ', get_loaded_extensions()), "\n";
