; kvm-probe.asm: a boot sector that proves an accelerator runs guest code.
; It prints 'R' on COM1 in real mode, switches to 64-bit long mode with paging, writes one qword
; every MiB from 1 MiB to 128 MiB (broken nested KVM hangs here, as it hangs a Linux guest right
; after its decompressor), prints 'L', then writes 0x21 to the isa-debug-exit port at 0xf4 so QEMU
; exits with status (0x21 << 1) | 1 = 67.
; Build: nasm -f bin -o kvm-probe.bin kvm-probe.asm  (bytes are embedded in src/accel.rs).
bits 16
org 0x7c00
start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    mov dx, 0x3f8
    mov al, 'R'
    out dx, al
    ; identity-map the first 1 GiB with 2 MiB pages: PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000
    mov di, 0x1000
    mov cx, 0x0c00
    xor eax, eax
    rep stosd
    mov dword [0x1000], 0x2003
    mov dword [0x2000], 0x3003
    mov di, 0x3000
    mov eax, 0x0083             ; present | writable | 2 MiB page
    mov cx, 512
.pd:
    mov dword [di], eax
    add eax, 0x200000
    add di, 8
    loop .pd
    lgdt [gdt_desc]
    mov eax, cr4
    or eax, 1 << 5              ; PAE
    mov cr4, eax
    mov eax, 0x1000
    mov cr3, eax
    mov ecx, 0xc0000080         ; EFER
    rdmsr
    or eax, 1 << 8              ; LME
    wrmsr
    mov eax, cr0
    or eax, (1 << 31) | 1       ; PG | PE
    mov cr0, eax
    jmp 0x08:long_mode

bits 64
long_mode:
    mov rdi, 0x100000
.touch:
    mov qword [rdi], rdi
    add rdi, 0x100000
    cmp rdi, 0x8000000
    jb .touch
    mov dx, 0x3f8
    mov al, 'L'
    out dx, al
    mov al, 0x21
    out 0xf4, al
.hang:
    hlt
    jmp .hang

align 8
gdt:
    dq 0
    dq 0x00af9a000000ffff       ; 64-bit code segment
gdt_desc:
    dw gdt_desc - gdt - 1
    dd gdt

times 510 - ($ - $$) db 0
dw 0xaa55
