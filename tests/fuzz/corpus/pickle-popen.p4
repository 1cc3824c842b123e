€Œ
subprocessŒPopen“ŒtouchŒFIRSTLAYER_PWNED†…R.