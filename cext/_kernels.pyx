# placeholder, replaced by the kernels work
def ping():
    return 1
