"""Everything that speaks kohya: the files its tools read and the network module cml hands them."""
